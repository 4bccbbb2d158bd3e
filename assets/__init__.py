"""kbpg's data files, installed as the package ``kbpg_tui.assets`` (see setup.py): ``lab/`` is the lab image's recipe."""
