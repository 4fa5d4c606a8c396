"""The YAML configs of cl-replay, installed as the package ``cl_replay.configs`` (see ``setup.py``):
``cl/<stream>.yaml`` (defaults of ``cl-replay run``) and ``pretrain/<model>_<dataset>.yaml``."""
