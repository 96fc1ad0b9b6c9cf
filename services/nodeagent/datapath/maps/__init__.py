"""One module per pinned BPF map, and the registry that lists them (:mod:`.registry`).

Adding a map: declare it in a header under ``bpf/lib`` (and use it from a program), write its
module here (twins, entry type, encode/decode, view, renderers, ``SPEC``), and add the module
to :data:`.registry.REGISTRY`. Pins, layout checks, the ``-D`` flags, drift repair,
``cilia bpf <command> list`` and replay's rendering follow from the registry.
"""
