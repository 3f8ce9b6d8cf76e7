"""em: model organisms for emergent misalignment, reproduced on a CPU and ready for a cluster.

One module per stage (data → train → sample → judge → metrics), plus the cache that makes the
book re-run in minutes and the phase-transition analysis.  Chapters in ``book/`` call into here.
"""
__version__ = "0.1.0"
