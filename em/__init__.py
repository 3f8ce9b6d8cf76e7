"""em: model organisms for emergent misalignment, reproduced on a CPU and ready for a cluster.

One module per stage (data → train → sample → judge → metrics), plus the cache that makes the
book re-run in minutes and the phase-transition analysis.  Chapters in ``book/`` call into here.
"""
import warnings as _warnings

__version__ = "0.1.0"

# Dependencies (sentence-transformers, accelerate) import ``tqdm.auto``, which warns on stderr in
# a notebook kernel without ipywidgets; the strict book build treats any stderr as a failure.
_warnings.filterwarnings("ignore", message="IProgress not found")
