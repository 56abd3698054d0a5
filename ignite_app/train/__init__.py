"""Training: build a run (``build``), its engines, handlers, metrics, schedules, EMA and trackers; resume it
(``resume``, ``autoresume``); run it (``loop``); launch it in one process or under torchrun/srun (``launch``,
``distributed``, ``elastic``, ``requeue``).
"""
