"""The real pixellm node (pixellm_ros.node.main) with model faults injected, for the fault tests.

    python -m reliability.faulty_node --ros-args ...   (the node's own arguments; from the repository root)

Everything is the node's code: ROS, the queue, the worker, the error handling. Only the model is made to fail,
on questions that start with a fault word, as a real model can (a CPU or GPU running out of memory, a bug):
- "FAULT:cuda_oom"  Engine.stream raises torch.cuda.OutOfMemoryError after one token,
- "FAULT:cpu_oom"   Engine.set_image raises MemoryError (numpy / Python out of memory),
- "FAULT:runtime"   Engine.stream raises RuntimeError before any token,
- "FAULT:callback"  the String query callback itself raises (a node bug: spinning must go on).
SIGUSR1 dumps every thread's stack to the log (diagnosing stalls).
"""
from __future__ import annotations

import faulthandler
import signal
import sys

import torch

import pixellm_ros.node as node_module
from pixellm_ros.answering import Answering
from pixellm_ros.engine import Engine
from pixellm_ros.model import streaming

_question: dict[str, str] = {}


def _patch() -> None:
    real_stream, real_set_image, real_on_query = Engine.stream, Engine.set_image, node_module.PixelLMNode._on_query

    @streaming  # like Engine.stream: a Stream of the events and the Result
    def stream(self, question: str, *args, **kwargs):
        if question.startswith("FAULT:runtime"):
            raise RuntimeError("injected fault: the model failed")
        gen = real_stream(self, question, *args, **kwargs)
        if question.startswith("FAULT:cuda_oom"):
            yield next(gen)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected fault)")
        return (yield from gen)

    def set_image(self, rgb, image_key=None):
        if _question.get("text", "").startswith("FAULT:cpu_oom"):
            raise MemoryError("injected fault: cannot allocate 4.00 GiB for the image features")
        return real_set_image(self, rgb, image_key)

    real_answer = Answering.answer

    def answer(self, req):
        _question["text"] = req.query.text
        return real_answer(self, req)

    def on_query(self, msg):
        if msg.data.startswith("FAULT:callback"):
            raise ValueError("injected fault: a bug in a subscription callback")
        return real_on_query(self, msg)

    Engine.stream, Engine.set_image = stream, set_image
    Answering.answer, node_module.PixelLMNode._on_query = answer, on_query


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    _patch()
    node_module.main(sys.argv)
