"""A fresh clone builds the broker on a machine without protoc (README's first command)."""

import os
import subprocess
import textwrap
from pathlib import Path

from conftest import ROOT


def test_a_fresh_clone_builds_the_broker_without_protoc(tmp_path: Path):
    clone = tmp_path / "seedlog"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    # A protoc that fails loudly, first on PATH, stands for a machine that has none: any
    # build script that still runs one stops the build.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    protoc = fake_bin / "protoc"
    protoc.write_text(textwrap.dedent("""\
        #!/bin/sh
        echo "protoc called, but the build must not need it" >&2
        exit 127
        """))
    protoc.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{fake_bin}:{env['PATH']}"
    env.pop("PROTOC", None)
    # The shared target dir keeps registry crates built; the clone's own crates (and the
    # vendored ones) build anew from its sources.
    env.setdefault("CARGO_TARGET_DIR", str(ROOT / "target"))
    build = subprocess.run(
        ["cargo", "build", "--locked", "--offline", "-p", "seedlog-node"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    assert "protoc called" not in build.stderr
    # Build scripts of the dependency tree: none of them may be one that wants protoc.
    tree = subprocess.run(
        ["cargo", "tree", "--locked", "--offline", "-p", "seedlog-node", "-e", "build",
         "--prefix", "none"],
        cwd=clone, env=env, capture_output=True, text=True, check=True,
    ).stdout
    for wants_protoc in ("prost-build", "protobuf-build", "protoc"):
        assert wants_protoc not in tree, tree
