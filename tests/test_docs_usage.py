"""The examples of docs/usage.md run as written: every fenced block preceded by
`<!-- docs-test: run -->`, in order, in one namespace, in an empty folder. Python blocks are
executed; bash blocks run the package's console scripts in-process. The Hub upload is intercepted."""

import io
import re
import shlex
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from unimoe_conversion import tiny_checkpoint
from unimoe_processing import chat_cli

USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"
BLOCK = re.compile(r"<!-- docs-test: run -->\n```(\w+)\n(.*?)\n```", re.S)
COMMANDS = {
    "unimoe-tiny-checkpoint": lambda args: tiny_checkpoint.main(args) or 0,
    "unimoe-chat": lambda args: chat_cli.main(args, stdin=io.StringIO("")),
}


def runnable_blocks() -> list[tuple[str, str]]:
    return BLOCK.findall(USAGE.read_text())


def run_bash(code: str) -> None:
    for line in filter(None, (line.strip() for line in code.splitlines())):
        name, *args = shlex.split(line)
        assert name in COMMANDS, f"docs run an unknown command: {line}"
        assert COMMANDS[name](args) == 0, line


@pytest.fixture
def uploads(monkeypatch):
    calls = []

    class Repo:
        def __init__(self, repo_id):
            self.repo_id = repo_id

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: Repo(repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_usage_examples_run(tmp_path, monkeypatch, capsys, uploads):
    monkeypatch.chdir(tmp_path)
    blocks = runnable_blocks()
    namespace: dict = {}
    for language, code in blocks:
        if language == "python":
            exec(compile(code, f"{USAGE.name} block", "exec"), namespace)
        else:
            assert language == "bash", language
            run_bash(code)
    printed = capsys.readouterr().out

    all_code = "\n".join(code for _, code in blocks)
    for feature in (
        'pipeline(\n    "any-to-text"',
        "pipe.stream(",
        "TextIteratorStreamer",
        "unimoe-chat",
        "push_to_hub",
    ):
        assert feature in all_code, feature
    prompts, out = namespace["prompts"], namespace["out"]
    assert [record[0]["generated_text"][: len(p)] for record, p in zip(out, prompts)] == prompts
    assert len(namespace["answers"]) == 3
    # The single upload holds what save_pretrained wrote (file names; the card names the repo).
    ((repo_id, uploaded),) = uploads
    assert repo_id == "your-name/my-unimoe"
    assert uploaded == sorted(p.name for p in (tmp_path / "my-unimoe").iterdir())
    assert "wrote a tiny random Uni-MoE checkpoint" in printed
