"""What of a guest's console output reaches a terminal.

A console is the guest's to write: anything it prints, a tenant's program included,
reaches the terminal of whoever reads it (its owner, an admin looking into a tenant's
workspace). Most escape sequences only draw (colours, the cursor, clearing the screen)
and a console needs them. The string sequences are different: an OSC sets the window's
title, writes the clipboard (OSC 52), makes hyperlinks, on some terminals reads things
back; DCS, APC, PM and SOS carry strings terminals act on too. ``Filter`` drops those
(introducer, text and terminator) and passes every other byte through unchanged, across
chunk boundaries. Only the 7-bit forms (ESC ] and the like) are recognised: the 8-bit
introducers are bytes of UTF-8 characters in a UTF-8 stream.
"""

from __future__ import annotations

import re

ESC = 0x1B
BEL = 0x07
CAN, SUB = 0x18, 0x1A
# The final byte after ESC that opens a string sequence: OSC, DCS, SOS, PM, APC.
STRING_OPENERS = frozenset(b"]PX^_")
ST_FINAL = ord("\\")  # ESC \ ends a string


class Filter:
    """Feed it output chunk by chunk; it returns what may be shown."""

    def __init__(self) -> None:
        self._in_string = False
        self._escape = False  # the last byte seen was ESC (its meaning not known yet)

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            if self._in_string:
                if self._escape:
                    self._escape = False
                    if b == ST_FINAL:
                        self._in_string = False
                        continue
                    self._in_string = False  # ESC then anything else: the string ended
                    self._after_escape(b, out)
                elif b == ESC:
                    self._escape = True
                elif b in (BEL, CAN, SUB):
                    self._in_string = False
                continue
            if self._escape:
                self._escape = False
                self._after_escape(b, out)
            elif b == ESC:
                self._escape = True
            else:
                out.append(b)
        return bytes(out)

    def _after_escape(self, b: int, out: bytearray) -> None:
        if b in STRING_OPENERS:
            self._in_string = True
        elif b == ESC:
            out.append(ESC)
            self._escape = True
        else:
            out += bytes((ESC, b))

    def flush(self) -> bytes:
        """What is held back at the end of the output (a lone ESC)."""
        held = bytes((ESC,)) if self._escape and not self._in_string else b""
        self._escape = False
        return held


# Every C0 control but tab and newline, DEL and the C1 controls (U+0080..U+009F).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: str) -> str:
    """``text`` the service sends (a workspace's reason, a node's labels or conditions: a
    node's agent writes them) as a terminal shows it without acting on it: each control
    character written out (``\\x1b``). A compromised node could put an OSC 52 (write the
    clipboard), a hyperlink or a window title in a reason that its workspace's owner's
    `ws show` or `ws list` printed to their terminal."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def one_line(text: str) -> str:
    """``plain``, and a newline written out too (``\\x0a``): for what is one line per
    item (an event of `ws events`, a workspace's state line), where a node's reason with
    a newline printed a line of its own making ("... workspace.state ... -> RUNNING")."""
    return plain(text).replace("\n", "\\x0a")
