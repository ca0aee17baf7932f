"""``bandistill ban``: a whole born-again run as resumable stages recorded in a manifest.

For each seed: generation 0 on labels, then for k = 1..N dump generation k-1's logits and
train generation k from that cache, export every generation to ONNX, evaluate every
generation and the ensembles on onnxruntime, and merge them into one ``bane.onnx``.

Where things are:

- :mod:`~bandistill.run.ban`: :func:`run_ban`, every seed planned, then run, then reported;
- :mod:`~bandistill.run.chain`: one seed's chain, the algorithm (one screen);
- :mod:`~bandistill.run.stages`: skip, resume, refuse or supersede one stage, or plan it;
- :mod:`~bandistill.run.manifest`: what each stage produced, and from what;
- :mod:`~bandistill.run.options`: :class:`BanOptions`, checked up front, and ``ban.json``;
- :mod:`~bandistill.run.superseding`: the refusal, and moving outputs aside instead of deleting;
- :mod:`~bandistill.run.repeats`: a single-seed run gaining ``--repeats``;
- :mod:`~bandistill.run.report`: :func:`build_report` from each seed's ``evaluation.json``.
"""

from bandistill.run.options import DEFAULT_VIEWS, OPTIONS_FILE, BanOptions, ban_options, read_options
from bandistill.run.ban import run_ban
from bandistill.run.report import EVALUATION_FILE, build_report

__all__ = ["BanOptions", "DEFAULT_VIEWS", "EVALUATION_FILE", "OPTIONS_FILE", "ban_options", "build_report",
           "read_options", "run_ban"]
