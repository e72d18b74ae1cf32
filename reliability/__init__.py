"""Drive the node and the trainer from outside, as the tests and benchmarks/reliability.py both do.

- node_process.py: the node as a child process (with a tiny scripted model) and a client that drives it;
- isolation.py, fastdds_shm.py: the ROS 2 isolation of a run (LOCALHOST, its own domain, Fast DDS clean-up);
- the reliability drivers: fuzz.py, flood.py, faults.py (+ faulty_node.py: the real node with model faults),
  security.py, train_faults.py, sharing common.py. Each is a plain function that returns a dict of figures:
  tests/reliability/ runs short versions and asserts on them, benchmarks/reliability.py runs the long ones.

Outside tests/ so that benchmarks import nothing from tests/ (tests/test_layers.py); it never imports tests/ either.
Not part of the shipped package: pixellm_ros never imports it.
"""
