"""After training: ``logs``, ``evaluate``/``predict`` (``inference``, ``batching``), ``export`` and ``tune``."""
