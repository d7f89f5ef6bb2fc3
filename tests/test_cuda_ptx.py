"""The committed PTX (bitttt/cuda_ptx/*.ptx): built from the current cuda/*.cu (source hash in the
header), signatures that match the sources, compute_80 / ISA 8.0, and, where ptxas exists, every
kernel compiled for sm_80 and sm_90 without register spills."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cuda"))
import build  # noqa: E402  (cuda/build.py)

from bitttt.backend.cuda import PTX_DIR, read_ptx_kernels  # noqa: E402


def test_every_source_has_a_current_ptx():
    assert build.sources(), "no cuda/*.cu found"
    assert build.stale() == [], "rebuild the PTX: python cuda/build.py --toolkit DIR (see cuda/build.py)"


def test_a_changed_source_is_stale(tmp_path, monkeypatch):
    src = tmp_path / "cuda"
    shutil.copytree(ROOT / "cuda", src, ignore=shutil.ignore_patterns("*.ptx", "__pycache__"))
    monkeypatch.setattr(build, "HERE", src)
    assert build.stale() == []
    (src / "ops.cu").write_text((src / "ops.cu").read_text() + "\n// an edit\n")
    assert build.stale() == ["ops.cu"]
    (src / "ops.cu").write_text((ROOT / "cuda" / "ops.cu").read_text())
    (src / "common.cuh").write_text((src / "common.cuh").read_text() + "\n")  # a header the sources include
    assert build.stale() == sorted(p.name for p in build.sources())


def test_ptx_headers_match_the_sources():
    kernels = read_ptx_kernels()
    want = {}
    for cu in build.sources():
        for name, (sig, _) in build.kernel_signatures(cu.read_text()).items():
            want[name] = (PTX_DIR / (cu.stem + ".ptx"), sig)
    assert kernels == want
    for ptx in PTX_DIR.glob("*.ptx"):
        text = ptx.read_text()
        assert ".version 8.0" in text and ".target sm_80" in text, ptx.name  # compute_80, CUDA 12.0: driver R525+
        for name in build.read_ptx_header(ptx)["kernels"]:
            assert f".entry {name}(" in text, (ptx.name, name)


def test_packaged_with_the_wheel():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"cuda_ptx/*.ptx"' in text


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="ptxas not on PATH")
@pytest.mark.parametrize("arch", build.CHECK_ARCHS)
def test_ptxas_compiles_every_kernel_without_spills(arch):
    for ptx in sorted(PTX_DIR.glob("*.ptx")):
        report, text = build.ptxas_report(ptx, arch)
        assert set(report) == set(build.read_ptx_header(ptx)["kernels"]), text
        spills = {k: u for k, u in report.items() if u["spill_st"] or u["spill_ld"]}
        assert not spills, f"{ptx.name} on {arch}: register spills {spills}\n{text}"
        assert all(u["smem"] <= 48 * 1024 for u in report.values())  # static shared memory limit
