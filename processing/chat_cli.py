"""`unimoe-chat`: chat with a Uni-MoE checkpoint from a terminal, answers streamed as they are generated.

    unimoe-chat --model DIR [--image a.png] [--video b.mp4] [--speech c.wav] [--audio d.flac] "question"
    unimoe-chat --model DIR                        # interactive, multi-turn

Media flags repeat (`--image a.png --image b.png`) and attach to the first question. Without a
question, or with `--interactive`, the chat goes on turn by turn; a turn may attach media with
`/image PATH`, `/video PATH`, `/speech PATH` or `/audio PATH` lines before its text, `/reset`
starts over, `/exit` (or end of input) leaves. Bad media files are reported with the processor's
error, which names the item (`image item 0 (sample 0): 'x.png': not an image ...`).

The model runs through `pipeline("any-to-text")` with this package's code; `--trust-remote-code`
runs the checkpoint's own copy instead. `--device auto` spreads the model with `device_map="auto"`.
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

MODALITIES = ("image", "video", "speech", "audio")
DTYPES = ("auto", "float32", "bfloat16", "float16")
HELP = (
    "commands: /image PATH, /video PATH, /speech PATH, /audio PATH (attach to your next message), "
    "/reset (new chat), /exit"
)


class ChatError(Exception):
    """A problem the user can fix (a missing file, a bad command); printed without a traceback."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="unimoe-chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("question", nargs="?", help="first (or only) user message; omit for an interactive chat")
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub repo id")
    for modality in MODALITIES:
        parser.add_argument(
            f"--{modality}", action="append", default=[], metavar="PATH", help=f"{modality} file or URL (repeatable)"
        )
    parser.add_argument("-i", "--interactive", action="store_true", help="keep chatting after the first answer")
    parser.add_argument("--system", help="system prompt (default: the official Vicuna one)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... or auto (device_map='auto'); default: GPU if any")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (default: the checkpoint's)")
    parser.add_argument("--attn-implementation", choices=("sdpa", "eager"), help="attention kernel")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--no-stream", action="store_true", help="print each answer once it is complete")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own code")
    args = parser.parse_args(argv)
    args.interactive = args.interactive or args.question is None
    return args


def load_pipeline(
    model: str,
    *,
    device: str | None = None,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
):
    """The any-to-text pipeline for `model`, with this package's classes unless `trust_remote_code`."""
    import torch
    from transformers import pipeline

    kwargs = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if device == "auto":
        kwargs["device_map"] = "auto"
    elif device is not None:
        kwargs["device"] = device
    if attn_implementation is not None:
        kwargs["model_kwargs"] = {"attn_implementation": attn_implementation}
    if trust_remote_code:
        return pipeline("any-to-text", model=model, trust_remote_code=True, **kwargs)
    from modeling_unimoe import AnyToTextPipeline

    return pipeline("any-to-text", model=model, pipeline_class=AnyToTextPipeline, **kwargs)


def check_media(media: dict[str, list[str]]) -> None:
    """Fails fast (before the model loads) on local files that do not exist."""
    for modality, sources in media.items():
        for source in sources:
            is_url = "://" in source or source.startswith("data:")
            if not is_url and not Path(source).is_file():
                raise ChatError(f"--{modality} {source}: no such file")


def user_message(text: str, media: dict[str, list[str]]) -> dict:
    content = [{"type": modality, "path": source} for modality in MODALITIES for source in media.get(modality, [])]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


class ChatSession:
    """A multi-turn chat: the history, media waiting for the next message, and the answering."""

    def __init__(
        self,
        pipe,
        *,
        system: str | None = None,
        generate_kwargs: dict,
        stream: bool,
        out: TextIO,
        answer_prefix: str = "",
    ):
        self.pipe = pipe
        self.answer_prefix = answer_prefix
        self.system = system
        self.generate_kwargs = generate_kwargs
        self.stream = stream
        self.out = out
        self.messages: list[dict] = []
        self.pending: dict[str, list[str]] = {m: [] for m in MODALITIES}

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.pending = {m: [] for m in MODALITIES}

    def attach(self, modality: str, source: str) -> None:
        check_media({modality: [source]})
        self.pending[modality].append(source)

    def ask(self, text: str) -> str:
        """Answers `text` with the pending media. A turn that fails (a bad file, say) is dropped
        together with its media; the history keeps only answered turns."""
        chat = [*self.messages, user_message(text, self.pending)]
        self.pending = {m: [] for m in MODALITIES}
        answer = self._generate(chat)
        self.messages = [*chat, {"role": "assistant", "content": answer}]
        return answer

    def _generate(self, chat: list[dict]) -> str:
        if self.stream:
            pieces = self.pipe.stream(chat, **self.generate_kwargs)
        else:
            pieces = iter([self.pipe(chat, return_full_text=False, **self.generate_kwargs)[0]["generated_text"]])
        answer = []
        for piece in pieces:
            if not answer:  # after the media loaded: an error prints on a line of its own
                self.out.write(self.answer_prefix)
            answer.append(piece)
            self.out.write(piece)
            self.out.flush()
        if not answer:
            self.out.write(self.answer_prefix)
        self.out.write("\n")
        self.out.flush()
        return "".join(answer)


def run_interactive(session: ChatSession, read_line: Callable[[str], str], err: TextIO) -> None:
    """Reads turns until `/exit` or end of input; errors end the turn, not the chat."""
    while True:
        try:
            line = read_line("user> ").strip()
        except EOFError:
            return
        if not line:
            continue
        try:
            if not _command(session, line, err):
                return
        except (ChatError, ValueError) as error:
            err.write(f"error: {error}\n")


def _command(session: ChatSession, line: str, err: TextIO) -> bool:
    """Handles one input line; False means leave."""
    if not line.startswith("/"):
        session.ask(line)
        return True
    name, _, argument = line[1:].partition(" ")
    if name in ("exit", "quit"):
        return False
    if name == "reset":
        session.reset()
    elif name == "help":
        err.write(HELP + "\n")
    elif name in MODALITIES and argument.strip():
        session.attach(name, argument.strip())
    else:
        raise ChatError(f"unknown command {line!r}; {HELP}")
    return True


def main(argv: list[str] | None = None, *, stdin: TextIO | None = None) -> int:
    args = parse_args(argv)
    media = {m: getattr(args, m) for m in MODALITIES}
    try:
        check_media(media)
        pipe = load_pipeline(
            args.model,
            device=args.device,
            dtype=args.dtype,
            attn_implementation=args.attn_implementation,
            trust_remote_code=args.trust_remote_code,
        )
    except ChatError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    except (OSError, ValueError) as error:
        sys.stderr.write(f"error: cannot load {args.model}: {error}\n")
        return 1
    generate_kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample}
    generate_kwargs.update({k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p)) if v})
    session = ChatSession(
        pipe,
        system=args.system,
        generate_kwargs=generate_kwargs,
        stream=not args.no_stream,
        out=sys.stdout,
        answer_prefix="assistant> " if args.interactive else "",
    )
    session.reset()
    session.pending = {m: list(sources) for m, sources in media.items()}
    if args.question is not None:
        try:
            session.ask(args.question)
        except ValueError as error:  # MediaError and the processor's other input errors
            sys.stderr.write(f"error: {error}\n")
            if not args.interactive:
                return 2
    if args.interactive:
        sys.stderr.write(HELP + "\n")
        run_interactive(session, _line_reader(stdin or sys.stdin, sys.stdout), sys.stderr)
    return 0


def _line_reader(stdin: TextIO, stdout: TextIO) -> Callable[[str], str]:
    def read_line(prompt: str) -> str:
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        if not line:
            raise EOFError
        return line

    return read_line


if __name__ == "__main__":
    sys.exit(main())
