"""Files: crash-safe writes (``atomic``), checkpoints (``checkpoint``, ``snapshot``), TensorBoard event files
(``events``), run-directory locks (``lock``), bounded reads of untrusted files (``safefile``), the trust model
(``trust``), paths and outputs (``paths``) and figures (``figures``).
"""
