"""How :mod:`pyg_lecc.ops.cpu` compiles its Numba kernels (their results are tested per op,
in ``test_edge_aggregate.py`` and ``test_edge_label_aggregate.py``)."""

import pytest
from ops_helpers import requires_numba, run_fresh_process

pytestmark = requires_numba

ONE, DEFAULT = "-force-vector-interleave=1", "-force-vector-interleave=0"


def test_each_kernel_compiles_with_one_vector_per_loop_step():
    # A fresh process, where each kernel is compiled (or loaded from the disk cache) at its
    # first call: the LLVM option is set around every one of those compilations and given
    # back after each, so nothing else compiled in the process sees it.
    code = (
        "import llvmlite.binding as llvm, torch\n"
        "calls, set_option = [], llvm.set_option\n"
        "def recorded(name, option):\n"
        "    calls.append(option)\n"
        "    set_option(name, option)\n"
        "llvm.set_option = recorded\n"
        "import pyg_lecc.ops.cpu as cpu\n"
        "N, F, r = 6, 3, 2\n"
        "x, y, V = torch.rand(N, F), torch.rand(N, F), torch.rand(N, r, F)\n"
        "c, w, bw, b0 = torch.rand(N, r), torch.rand(r, F), torch.rand(r), torch.rand(F)\n"
        "rowptr, col = torch.arange(N + 1), torch.arange(N).roll(1)\n"
        "args = (x, x, y, y, b0, V, c, w, bw, rowptr, col, 10.0, 0.2)\n"
        "for limit in (cpu.ONE_PASS_BUFFER_BYTES, -1):  # both backward passes\n"
        "    cpu.ONE_PASS_BUFFER_BYTES = limit\n"
        "    Q, P = cpu.edge_aggregate_forward(*args)\n"
        "    cpu.edge_aggregate_backward(Q, P, *args)\n"
        "pre = torch.rand(N, F)\n"
        "label = (pre, None, V, c, w, bw, rowptr, col, 0.2)\n"
        "Q, P = cpu.edge_label_aggregate_forward(*label)\n"
        "cpu.edge_label_aggregate_backward(Q, P, *label)\n"
        "print(' '.join(calls))\n"
    )
    # Six kernels: the forward, two backward passes and their sources, the label ops' three.
    assert run_fresh_process(code) == [ONE, DEFAULT] * 6


def test_a_failed_compilation_gives_llvm_its_setting_back(monkeypatch):
    import numba

    import pyg_lecc.ops.cpu as cpu

    calls, set_option = [], cpu.llvm.set_option

    def recorded(name, option):
        calls.append(option)
        set_option(name, option)

    monkeypatch.setattr(cpu.llvm, "set_option", recorded)
    with pytest.raises(TypeError, match="Signature mismatch"):
        cpu._forward.compile((numba.types.int64,))  # what the dispatcher does for a new one
    assert calls == [ONE, DEFAULT]
