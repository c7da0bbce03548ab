"""Regenerate the Python stubs of llm.proto: `python -m serve_app.proto.generate`.

protoc runs with the repository root as its include path, so the generated gRPC module
imports `from serve_app.proto import llm_pb2` and works as `serve_app.proto.llm_pb2_grpc`
with no hand edits. The stubs depend on the grpcio-tools version (it writes its version into
them), so tests/serve_app/test_proto_sync.py regenerates them and compares byte for byte.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parents[1]
PROTO_FILE = PROTO_DIR.relative_to(REPO_ROOT) / "llm.proto"  # serve_app/proto/llm.proto
GENERATED_FILES = ("llm_pb2.py", "llm_pb2_grpc.py")


def generate(out_dir: Path = PROTO_DIR) -> list[Path]:
    """Write the stubs of llm.proto into out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        exit_code = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={REPO_ROOT}",
                f"--python_out={staging}",
                f"--grpc_python_out={staging}",
                str(PROTO_FILE),
            ]
        )
        if exit_code != 0:
            raise RuntimeError(f"protoc failed with exit code {exit_code} on {PROTO_FILE}")
        written = []
        for name in GENERATED_FILES:
            target = out_dir / name
            shutil.copyfile(Path(staging) / PROTO_FILE.parent / name, target)
            written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=PROTO_DIR, help="default: %(default)s")
    for path in generate(parser.parse_args().out_dir):
        print(path)


if __name__ == "__main__":
    main()
