import importlib.util
from pathlib import Path

# Until the BEATs encoder lands in `modeling_unimoe/`, the audio path is tested against a
# stand-in with the same interface (tests/beats_standin.py). Remove once it has landed.
if not (Path(__file__).parents[1] / "modeling_unimoe" / "modeling_beats.py").exists():
    _spec = importlib.util.spec_from_file_location("beats_standin", Path(__file__).with_name("beats_standin.py"))
    _standin = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_standin)
    _standin.install()
