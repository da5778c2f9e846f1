r"""What a Verilog design under test may not use: the static rules that keep its verdict the testbench's.

The design is compiled into one simulation with its testbench and the reference model, so whatever it can
name there it can forge a pass with:

- **Hierarchical names.** `always @(tb.stats1.clocks) tb.stats1.errors = 0;` zeroes the testbench's mismatch
  counter; `assign f = tb.f_ref;` copies the reference's output. Verilog reaches another module's items only
  through a dotted name (or `$root`), so a design may use no `.` after a name (named port connections,
  `.a(x)` and `.*`, stay allowed).
- **The testbench's modules.** `reference_module r(.x, .f);` (v1) or `RefModule` (v2) instantiates the answer.
  A design may not use the name of anything the testbench defines.
- **System tasks outside a small set.** `$fopen`, `$fgets`, `$readmemh` read the testbench's source, which
  holds the per-sample report token; plusargs and `$system` reach beyond the design; `$finish` / `$stop`
  end the simulation after the first few samples, and a wrong design that matched those passes
  ("Mismatches: 0 in 1 samples"). Only arithmetic, conversion, query, display and waveform-dump tasks are
  allowed (ALLOWED_SYSTEM_NAMES).
- **Overriding shared nets.** An input port's net is the testbench's stimulus net, which the reference
  reads too: `initial force x = 0;` on the design's own input makes the reference answer the same constant
  question as the design. `force`, `release`, `deassign`, `alias`, the bidirectional switches (`tran`, ...)
  and `inout` / `ref` ports are refused (FORBIDDEN_KEYWORDS).
- **Escaped names and control characters.** iverilog reads `\$finish` as the system task and
  `\reference_module` as the module, and ends an escaped name at a backspace where Python's `\S` does not
  (`\z<BS>^tb.f_ref` hid a hierarchical name). Designs may use neither escaped names nor control characters
  other than tab and line ends, nor non-ASCII text outside comments and strings, so that this module and
  the compiler split the text into the same tokens.
- **Compiler directives other than `timescale / `default_nettype.** `include reads a file; a `define leaks
  into the testbench (compiled after the design) and could redefine its macros; token pasting could build
  any forbidden name out of allowed pieces. With no macros, every name the compiler sees is in the text
  checked here.

A design breaking a rule is refused before anything runs (outcome "refused"), with the rule it broke.
Every canonical solution of VerilogEval v1 and v2 and of the shipped problems passes these rules
(tests/test_verilog_lint.py), so honest designs are not affected. The sandbox still runs the rest: what
these rules cannot see (a design that loops, or exhausts memory) is the sandbox's to contain.
"""
from __future__ import annotations

import re
from typing import Iterator, NamedTuple

ALLOWED_DIRECTIVES = frozenset({"timescale", "default_nettype", "resetall", "celldefine", "endcelldefine"})
"""Compiler directives a design may use: none of them defines, reads or pastes anything."""

ALLOWED_SYSTEM_NAMES = frozenset(
    {
        # conversion and arithmetic
        "$signed", "$unsigned", "$clog2", "$bits", "$countones", "$countbits", "$onehot", "$onehot0",
        "$isunknown", "$itor", "$rtoi", "$bitstoreal", "$realtobits", "$shortrealtobits", "$bitstoshortreal",
        "$floor", "$ceil", "$ln", "$log10", "$exp", "$sqrt", "$pow", "$abs", "$sin", "$cos", "$tan",
        # array queries
        "$size", "$left", "$right", "$low", "$high", "$increment", "$dimensions", "$unpacked_dimensions",
        # time ($finish, $stop and $fatal are not here: a design that ends the simulation after a few lucky
        # samples gets "Mismatches: 0 in 1 samples"; nor is $random or $urandom: the simulation has one
        # generator, which the testbench's stimulus draws from, and a design that drew the values it could
        # not answer made the testbench ask only the ones it could)
        "$time", "$stime", "$realtime",
        # waveform dumps: written into the sample's own folder, which nothing reads afterwards
        "$dumpfile", "$dumpvars", "$dumpon", "$dumpoff", "$dumpall", "$dumpflush", "$dumplimit",
        # display to the simulation's output, and strings (nothing outside the design is named)
        "$display", "$displayb", "$displayh", "$displayo", "$write", "$writeb", "$writeh", "$writeo",
        "$strobe", "$monitor", "$monitoron", "$monitoroff", "$error", "$warning", "$info",
        "$sformat", "$sformatf", "$swrite",
    }
)
"""System tasks and functions a design may call. Everything else is refused: file and memory-file access
($fopen, $fgets, $fscanf, $readmemh, ...), plusargs, $system, $root, $unit, ending the simulation
($finish, $stop, $fatal; and $sscanf, which stops Icarus 11's simulation with exit status 0 when given a
format code it does not know) and the shared random-number generator ($random, $urandom, $dist_*)."""

DEFINING_KEYWORDS = frozenset({"module", "macromodule", "interface", "program", "package", "primitive", "class",
                               "checker", "config"})
"""Keywords followed by the name of a top-level unit. A design may not use the units the testbench defines
(its tasks, functions and instances are reachable only through hierarchical names, refused anyway)."""

FORBIDDEN_KEYWORDS = {
    "bind": "it attaches code to other modules",
    "force": "it overrides a net the testbench shares through the design's ports",
    "release": "it overrides a net the testbench shares through the design's ports",
    "deassign": "it overrides a net the testbench shares through the design's ports",
    "alias": "it joins the design's nets to the testbench's",
    **{switch: "a bidirectional switch drives the testbench's nets through the design's ports"
       for switch in ("tran", "tranif0", "tranif1", "rtran", "rtranif0", "rtranif1")},
    "inout": "the problems' ports are inputs and outputs; an inout port drives the testbench's stimulus",
    "ref": "the problems' ports are inputs and outputs; a ref port shares the testbench's variable",
}
"""Keywords a design may not use, and why. An input port's net is the testbench's stimulus net, which the
reference sees too: `initial force x = 0;` or `tran t (x[1], zero);` on the design's own input made the
reference answer the same constant question as the design (both passed before these rules)."""


class Token(NamedTuple):
    kind: str
    """"id" (a name), "esc" (an escaped name, \\name), "sys" ($name), "dir" (`name), "str", "num" or "op"."""
    text: str
    line: int


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>//[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<str>"(?:\\.|[^"\\\n])*"?)
  | (?P<escaped>\\\S+)
  | (?P<sys>\$[A-Za-z0-9_$]+)
  | (?P<dir>`[A-Za-z_][A-Za-z0-9_$]*|``|`")
  | (?P<num>(?:\d[\d_]*)?'[sS]?[bBoOdDhH]\s*[0-9a-fA-FxXzZ?_]+|'[01xXzZ]|\d[\d_]*(?:\.[\d_]+)?(?:[eE][+-]?\d[\d_]*)?)
  | (?P<id>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<op>.)
    """,
    # ASCII classes: to Python, \s and \d also match Unicode spaces and digits, which iverilog does not read
    # as such (a no-break space would split "force" for this tokenizer only); those go to `op` and are refused.
    re.VERBOSE | re.DOTALL | re.ASCII,
)


def tokens(source: str) -> Iterator[Token]:
    """The tokens of Verilog `source`, comments and whitespace left out."""
    line = 1
    for m in _TOKEN.finditer(source):
        kind, text = m.lastgroup, m.group()
        if kind not in ("space", "comment"):
            yield Token("esc" if kind == "escaped" else kind, text, line)
        line += text.count("\n")


def defined_names(source: str) -> set[str]:
    """Names of the top-level units (modules, interfaces, packages, ...) `source` defines."""
    names: set[str] = set()
    previous = None
    for tok in tokens(source):
        if previous is not None and previous.text in DEFINING_KEYWORDS and tok.kind == "id":
            names.add(tok.text)
        previous = tok
    return names


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
r"""Control characters other than tab, line feed and carriage return: the compiler's tokens and these could
differ around them (iverilog ends an escaped name at a backspace, Python's whitespace includes \v)."""


def refusals(design: str, testbench: str) -> list[str]:
    """Why `design` may not run against `testbench` (see the module docstring); [] for an honest design."""
    control = _CONTROL.search(design)
    if control:
        line = design.count("\n", 0, control.start()) + 1
        return [f"line {line}: control character {ord(control.group()):#04x} (only tab and line ends are allowed)"]
    reserved = defined_names(testbench)
    reasons: list[str] = []

    def refuse(tok: Token, why: str) -> None:
        if len(reasons) < 5:
            reasons.append(f"line {tok.line}: {why}")

    previous: Token | None = None
    for tok in tokens(design):
        if tok.kind == "esc":
            refuse(tok, f"escaped name {tok.text} (the compiler may read it as a system task or another "
                        "module's name)")
        elif tok.kind == "op" and not tok.text.isascii():
            refuse(tok, f"non-ASCII character {tok.text!r} outside comments and strings")
        elif tok.kind == "dir" and tok.text[1:] not in ALLOWED_DIRECTIVES:
            refuse(tok, f"compiler directive {tok.text} (only `timescale and `default_nettype are allowed)")
        elif tok.kind == "sys" and tok.text not in ALLOWED_SYSTEM_NAMES:
            refuse(tok, f"system task or function {tok.text} (a design may not reach files, the command line "
                        "or other modules)")
        elif tok.kind == "id" and tok.text in FORBIDDEN_KEYWORDS:
            refuse(tok, f"`{tok.text}` ({FORBIDDEN_KEYWORDS[tok.text]})")
        elif tok.kind == "id" and tok.text in reserved:
            refuse(tok, f"{tok.text!r}, which the testbench defines (a design may not use the reference or the "
                        "testbench)")
        elif tok.text == "." and previous is not None and (previous.kind in ("id", "sys") or previous.text in ("]", ")")):
            refuse(tok, f"hierarchical name {previous.text}.… (a design may not name items of other modules)")
        previous = tok
    return reasons
