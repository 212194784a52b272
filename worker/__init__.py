"""Process wiring: settings, the Temporal worker, the ``billow`` CLI and the
embedded development stack (``billow up``).

This is the only place, with ``api``, that reads configuration.
"""
