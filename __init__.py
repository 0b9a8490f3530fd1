"""The checkout itself imported as `smallnets`: a script (or `python -m smallnets`) in the folder above a clone
named `smallnets`.

Python finds the current folder before the editable install, and this checkout folder would then be an empty
namespace package (`module 'smallnets' has no attribute 'load'`). This file makes it the real package instead,
with the same mapping as pyproject's package-dir: `smallnets.core` from ./smallnets/, the stages from ./export,
./optimize, ./serve and ./benchmarks. Nothing imports it otherwise (the wheel does not ship it).
"""

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent
__path__ = [str(_CHECKOUT / "smallnets"), str(_CHECKOUT)]
__file__ = str(_CHECKOUT / "smallnets" / "__init__.py")
exec(compile(Path(__file__).read_text(), __file__, "exec"))
