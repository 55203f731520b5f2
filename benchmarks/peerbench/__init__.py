"""The parts of ``benchmarks/peers.py`` (robustlab against torchattacks, Foolbox and IBM ART).

- ``common``: the attack settings (``Spec``, ``SPECS``), which peers import, and the small model
  helpers every part uses (``predict``, ``freeze``, the forward+backward ``floor_passes``).
- ``adapters``: one builder per library behind one interface, ``Builder``.
- ``levers``: robustlab variants with proposed speed changes (``--levers``).
- ``models``: the two models and the Fashion-MNIST data.
- ``timing``: the timed runs and the peak-memory probes.
- ``training``: adversarial-training throughput.
- ``tables``: the markdown tables and the README section.

``benchmarks/peers.py`` is the command line; it puts ``benchmarks/`` on ``sys.path`` (as any
script there does), so ``import peerbench`` works from the scripts in ``benchmarks/``.
"""
