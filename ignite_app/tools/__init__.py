"""After training: ``logs``, ``evaluate``/``predict`` (``inference``) and ``export``."""
