"""The committed gRPC stubs are exactly what `python -m serve_app.proto.generate` writes."""

from __future__ import annotations

from pathlib import Path

from serve_app.proto import generate


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    assert sorted(path.name for path in written) == sorted(generate.GENERATED_FILES)
    for path in written:
        committed = generate.PROTO_DIR / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run `python -m serve_app.proto.generate`"
        )


def test_generated_grpc_module_imports_the_package_path() -> None:
    text = (generate.PROTO_DIR / "llm_pb2_grpc.py").read_text()
    assert "from serve_app.proto import llm_pb2" in text
