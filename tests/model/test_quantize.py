"""8-bit / 4-bit quantization (bitsandbytes) of the decoder linears, quantized while the checkpoint is read:
same bits as quantizing a loaded model, nothing full precision assigned to the decoder, answers end to
end, the rest of the model untouched, and clear refusals at configure. Runs on CPU (and CUDA if there)."""
from __future__ import annotations

import sys

import pytest
import torch
from tests.support.tiny_checkpoint import Q_ONE, synthetic_image
from torch import nn

from pixellm_ros.engine import Engine, EngineConfig
from pixellm_ros.model import SamplingConfig, load_pixellm, save_pixellm
from pixellm_ros.model import checkpoint
from pixellm_ros.model.quantize import DECODER_LINEARS, check_quantization
from pixellm_ros.params import ConfigError, configure, load_defaults

bnb = pytest.importorskip("bitsandbytes")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
QUANTIZED = {"4bit": (bnb.nn.Linear4bit, torch.uint8), "8bit": (bnb.nn.Linear8bitLt, torch.int8)}


@pytest.fixture(scope="module")
def folders(tiny_ckpt, tiny_model, tmp_path_factory) -> dict:
    """The same weights twice: the release's layout (bf16 .bin shards + index, separate CLIP folder) and
    ours (one fp32 safetensors file, vision tower inside)."""
    model, tok = tiny_model
    return {"bin": tiny_ckpt.checkpoint,
            "safetensors": save_pixellm(model, tok, tmp_path_factory.mktemp("quantize") / "model")}


def quantize_after_load(model: nn.Module, mode: str, device: str) -> None:
    """The reference: swap a loaded full-precision model's decoder linears for bitsandbytes layers."""
    for block in model.model.layers:
        for parent in (block.self_attn, block.mlp):
            for name, linear in list(parent.named_children()):
                weight = linear.weight.data.cpu()
                if mode == "8bit":
                    q = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=False,
                                            has_fp16_weights=False, threshold=6.0)
                    q.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
                else:
                    q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                                          compute_dtype=model.dtype, quant_type="nf4")
                    q.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
                setattr(parent, name, q.to(device))


def decoder_keys(model: nn.Module) -> set[str]:
    return {f"model.layers.{i}.{name}.weight" for i in range(len(model.model.layers)) for name in DECODER_LINEARS}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["4bit", "8bit"])
@pytest.mark.parametrize("layout", ["bin", "safetensors"])
def test_streaming_quantization_matches_quantize_after_load(folders, layout, mode, dtype, device):
    streamed, _ = load_pixellm(folders[layout], device=device, dtype=dtype, quantization=mode)
    reference, _ = load_pixellm(folders[layout], device=device, dtype=dtype)
    quantize_after_load(reference, mode, device)
    # state_dict holds the packed weights and every piece of quantization state (nf4: absmax, nested
    # absmax and its code, shape/dtype metadata; int8: SCB) as well as all full-precision tensors.
    got, want = streamed.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    assert len(got) > len(dict(reference.named_parameters()))  # the quantization state is in there
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_only_the_decoder_linears_are_quantized(folders, tiny_model, mode):
    full, _ = tiny_model
    model, _ = load_pixellm(folders["bin"], quantization=mode)
    layer_type, storage = QUANTIZED[mode]
    quantized = decoder_keys(model)
    for name, module in model.named_modules():
        if f"{name}.weight" in quantized:
            assert isinstance(module, layer_type) and module.weight.dtype == storage, name
    full_params = dict(full.named_parameters())
    rest = {k: p for k, p in model.named_parameters() if k not in quantized}
    assert rest.keys() == full_params.keys() - quantized  # embeddings, lm_head, norms, CLIP, projectors, decoder
    for key, p in rest.items():
        assert type(p) is nn.Parameter and torch.equal(p, full_params[key]), key


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_no_full_precision_decoder_weight_is_ever_assigned(folders, mode, monkeypatch):
    """The memory promise, checked by structure rather than RSS: every decoder weight put into the model
    is already quantized (1 byte per weight for 8-bit, half a byte for 4-bit), so no full-precision LLM
    is ever built."""
    assigned = {}
    set_tensor = checkpoint._set_tensor
    monkeypatch.setattr(checkpoint, "_set_tensor",
                        lambda root, key, value: (assigned.setdefault(key, value), set_tensor(root, key, value)))
    model, _ = load_pixellm(folders["bin"], quantization=mode)
    _, storage = QUANTIZED[mode]
    for key in decoder_keys(model):
        value = assigned[key]
        shape = value.shape if mode == "8bit" else value.quant_state.shape
        assert value.dtype == storage, key
        assert value.numel() * value.element_size() == shape.numel() * (1 if mode == "8bit" else 0.5), key


def forced_answer(tok) -> SamplingConfig:
    """Random weights answer garbage: force a short answer with one codebook group (one target)."""
    ids = tok.sp.encode("it is") + tok.seg_token_ids + [tok.eos_id]
    def force(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        forced = torch.full_like(logits, float("-inf"))
        forced[ids[min(len(generated), len(ids) - 1)]] = 0.0
        return forced
    return SamplingConfig(max_new_tokens=len(ids), logits_processor=force)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_quantized_engine_answers_end_to_end(folders, mode, dtype):
    engine = Engine.from_pretrained(folders["bin"], device="cpu", dtype=dtype, quantization=mode)
    engine.config.sampling = forced_answer(engine.tokenizer)
    rgb = synthetic_image(90, 120)
    engine.set_image(rgb)
    result = engine.ask(Q_ONE)
    assert result.stop_reason == "eos" and len(result.targets) == 1
    mask = result.targets[0].mask
    assert mask.shape == rgb.shape[:2] and mask.dtype == bool
    engine.close()


def test_unknown_quantization_is_refused(folders):
    with pytest.raises(ValueError, match=r"quantization must be one of \('none', '8bit', '4bit'\), not '3bit'"):
        Engine(EngineConfig(model_path=str(folders["bin"]), device="cpu", quantization="3bit"))
    defaults = load_defaults()
    with pytest.raises(ConfigError, match="quantization must be one of"):
        configure({**defaults, "model_path": str(folders["safetensors"]), "quantization": "3bit"}, defaults)


def test_missing_bitsandbytes_is_refused_at_configure(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    defaults = load_defaults()
    with pytest.raises(ConfigError, match=r"quantization '4bit' needs bitsandbytes: `pip install -r requirements"):
        configure({**defaults, "model_path": str(folders["safetensors"]), "quantization": "4bit"}, defaults)
    with pytest.raises(RuntimeError, match="needs bitsandbytes"):
        load_pixellm(folders["bin"], quantization="8bit")


def test_device_without_support_is_refused_at_configure(folders, monkeypatch):
    def no_kernel(*args, **kwargs):
        raise NotImplementedError("no kernel for bitsandbytes::quantize_4bit on this device")
    monkeypatch.setattr(bnb.functional, "quantize_4bit", no_kernel)
    defaults = load_defaults()
    with pytest.raises(ConfigError, match=r"cannot run 4bit layers on cpu in torch.float32 \(NotImplementedError: "
                                          r"no kernel.*\); choose another dtype or device, or quantization 'none'"):
        configure({**defaults, "model_path": str(folders["safetensors"]), "device": "cpu", "quantization": "4bit"},
                  defaults)
    check_quantization("8bit", torch.device("cpu"), torch.float32)  # the other mode is unaffected


def rss_file_bytes() -> int:
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["RssFile"].split()[0]) * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise / /proc: Linux")
@pytest.mark.parametrize("layout", ["bin", "safetensors"])
def test_released_pages_leave_memory_and_read_back_from_the_file(tmp_path, layout):
    """Each shard is read through mmap: without release_pages every page read stays resident (RSS) while
    the shard is mapped, so a quantized load would peak at the full-precision size. Released pages must
    come back intact from the file when read again (the model may still hold such a tensor)."""
    weight = torch.randn(4096, 2048)  # 32 MiB
    if layout == "bin":
        torch.save({"w": weight}, tmp_path / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file
        save_file({"w": weight}, str(tmp_path / "model.safetensors"))
    for _, tensor in checkpoint.iter_tensors(checkpoint.weight_files(tmp_path)):
        before = rss_file_bytes()
        assert torch.equal(tensor, weight)  # reads every page
        read = rss_file_bytes()
        checkpoint.release_pages(tensor)
        assert read - before > 24 * 2 ** 20 and read - rss_file_bytes() > 24 * 2 ** 20
        assert torch.equal(tensor, weight)
