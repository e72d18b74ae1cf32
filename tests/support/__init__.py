"""Helpers shared by the tests (imported as `tests.support.X`): ROS gating, node processes and clients, the peer
process of the cross-process tests, tiny checkpoints, MUSE fixtures, Fast DDS clean-up, the import graph."""
