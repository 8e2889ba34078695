"""``rlptune reproduce``: a paper's experiments as one resumable study, with a verdict on each of its claims.

The application beside the library (as open_clip keeps its training app apart): it plans protocol runs, executes
them through :mod:`rlptune.sweeps`, and reads them with :mod:`rlptune.report`; nothing in the library imports it.
One module per job:

- :mod:`.settings` — what a study runs on (:class:`~.settings.StudySettings`), its parts, and which methods it takes
  (read from the method registry and the recipes, never listed by hand).
- :mod:`.plan` — the runs of each part (variants of a method's recipe) and the finished results they map to.
- :mod:`.analyse` — tables and the verdict on each claim, from the statistics.
- :mod:`.merge` — an earlier report's parts joined to this one (``--merge``), checked field by field.
- :mod:`.estimate` — the full study's wall time on this machine.
- :mod:`.write` — the report folder: tables, figures, ``evidence.json`` and ``EVIDENCE.md``.
- :mod:`.study` — the command's work: plan, run, analyse, write.
- :mod:`.command` — the ``reproduce`` command line (imports nothing heavy: the study loads when it runs).

Kept free of imports so that the command line can build its parser without torch.
"""
