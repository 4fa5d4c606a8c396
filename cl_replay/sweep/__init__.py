"""``cl-replay sweep SPEC``: the cells of a grid of ``pretrain`` or ``run`` configurations as Ray tasks.

* ``spec``: the spec file (command, base config, axes) and its cells, each with a resolved config
  and that config's hash.
* ``cells``: what runs inside one trial (the record ``sweep_cell.json``, the command's Python API)
  and what a restart does with a cell folder found on disk.
* ``runner``: Ray (a local instance or a cluster), progress, the final tables.
* ``report``: the comparison table of the finished cells as markdown and PNG.
* ``command``: the click command.

Ray is an optional dependency (``pip install -e ".[sweep]"``); only ``runner`` imports it.
"""
