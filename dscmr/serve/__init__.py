"""``dscmr serve``: the search service (FastAPI) and its web page.

:func:`~dscmr.serve.app.create_app` builds the app around a :class:`~dscmr.serve.state.ServeState` (one run and the
current version of each bundle); :mod:`dscmr.serve.bench` measures it over loopback HTTP.
"""

from __future__ import annotations
