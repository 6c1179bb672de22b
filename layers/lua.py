"""Generate a Wireshark Lua dissector for the stack from the wire tables.

The RUDP fields are written by looping over
:data:`stacklab.wire.RUDP_HEADER_FIELDS` (struct code -> ProtoField type,
offsets from the sizes) and the flag names over :class:`stacklab.wire.Flag`,
so the dissector cannot drift from the codec or the Scapy layer; the test
suite runs it in real ``tshark`` and compares every field.

What the script registers (Wireshark 4, Lua 5.2 API):

* ``slrudp`` (Wireshark already has a protocol named ``rudp``): fields
  ``slrudp.seq``, ``slrudp.ack``, ``slrudp.flag`` (the letter, a string),
  ``slrudp.len``, ``slrudp.payload``; stacklab's extensions
  ``slrudp.crc32c`` and ``slrudp.crc32c.status`` (Good/Bad, like Wireshark's
  checksum status fields; Bad only in a conversation whose SYN-ACK accepted
  integrity) and ``slrudp.options`` with ``slrudp.options.*``; Expert Info for
  a datagram shorter than the header, a length field claiming too much, an
  unknown flag and a bad trailer; on UDP ``rudp`` port both ways, plus an
  optional strict heuristic on any UDP port;
* the verifier's findings in a capture written by ``stacklab annotate``: the
  dissector reads the frame's ``stacklab: KIND: TEXT`` comments and shows
  them as ``slrudp.analysis.*`` fields, Expert Info (group and severity as
  Wireshark's TCP analysis uses them) and a bracketed label in the Info
  column; the table of kinds is generated from
  :data:`stacklab.analysis.findings.KINDS`;
* ``slframe``: the app frames over TCP, ``slframe.len`` and ``slframe.body``,
  reassembled with ``dissect_tcp_pdus``;
* ``sldhcp`` and ``sldns``: the JSON datagrams, handed to Wireshark's
  ``json`` dissector.  ``sldns`` takes UDP 5353 from mDNS and hands every
  datagram that does not start with ``{`` back to the original ``mdns``
  dissector, so real mDNS still decodes and the JSON no longer shows as
  "Malformed Packet".

Every port is a preference (Edit > Preferences > Protocols) and every
protocol is offered in Decode As.
"""

from __future__ import annotations

from typing import Final

from stacklab.wire import (
    FRAME_PREFIX_LEN,
    RUDP_HEADER_FIELDS,
    RUDP_HEADER_LEN,
    Flag,
    Ports,
)

_PROTOFIELD_TYPES: Final = {
    "I": "uint32",
    "H": "uint16",
    "B": "uint8",
    "c": "string",
}
"""struct code -> Wireshark ProtoField constructor."""

_TVB_READERS: Final = {"I": "uint", "H": "uint", "B": "uint", "c": "uint"}

_LENGTH_FIELD: Final = "len"
_FLAG_FIELD: Final = "flag"


def _lua_string(text: str) -> str:
    """A Lua string literal (double quoted, escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _rudp_fields() -> tuple[str, str, str]:
    """Lua for the ProtoField declarations, the field list and the tree code."""
    flag_names = ", ".join(f"[{flag.value[0]:#04x}] = {_lua_string(flag.name)}" for flag in Flag)
    declarations = [f"local rudp_flag_names = {{ {flag_names} }}"]
    names = []
    adds = []
    offset = 0
    for spec in RUDP_HEADER_FIELDS:
        kind = _PROTOFIELD_TYPES[spec.struct_code]
        abbr = f"slrudp.{spec.name}"
        var = f"f_rudp_{spec.name}"
        if spec.struct_code == "c":
            # A one-character string ("S"), so that pyshark and -Y 'slrudp.flag == "S"' read
            # the letter itself; the name (SYN...) is appended to the tree text.
            args = f"{_lua_string(abbr)}, {_lua_string(spec.description)}"
        else:
            args = f"{_lua_string(abbr)}, {_lua_string(spec.description)}, base.DEC"
        declarations.append(f"local {var} = ProtoField.{kind}({args})")
        names.append(var)
        reader = _TVB_READERS[spec.struct_code]
        adds.append(f"    local v_{spec.name} = tvb({offset}, {spec.size}):{reader}()")
        if spec.struct_code == "c":
            adds.append(
                f"    subtree:add({var}, tvb({offset}, {spec.size}), flag_text(v_{spec.name}))"
                f':append_text(" (" .. (rudp_flag_names[v_{spec.name}] or "unknown") .. ")")'
            )
        else:
            adds.append(f"    subtree:add({var}, tvb({offset}, {spec.size}))")
        offset += spec.size
    assert offset == RUDP_HEADER_LEN
    return "\n".join(declarations), ", ".join(names), "\n".join(adds)


def _offset_of(name: str) -> tuple[int, int]:
    """(offset, size) of a header field, from the table."""
    offset = 0
    for spec in RUDP_HEADER_FIELDS:
        if spec.name == name:
            return offset, spec.size
        offset += spec.size
    raise KeyError(name)


_EXPERT_SEVERITY: Final = {"chat": "CHAT", "note": "NOTE", "warn": "WARN", "error": "ERROR"}
_EXPERT_GROUP: Final = {
    "sequence": "SEQUENCE",
    "malformed": "MALFORMED",
    "checksum": "CHECKSUM",
    "protocol": "PROTOCOL",
}


def _analysis() -> tuple[str, str, str]:
    """Lua for the ``slrudp.analysis.*`` fields, their Expert Info entries and the kinds table.

    Generated from :data:`stacklab.analysis.findings.KINDS`, the meaning the
    comments of ``stacklab annotate`` have in Python, so both agree.
    """
    from stacklab.analysis.findings import ANALYSIS_FIELDS, KINDS

    lines = [
        'local f_an = ProtoField.none("slrudp.analysis", "stacklab verify analysis")',
    ]
    field_vars = ["f_an"]
    for name, (kind, title) in ANALYSIS_FIELDS.items():
        var = f"f_an_{name}"
        lines.append(
            f"local {var} = ProtoField.{kind}("
            f"{_lua_string('slrudp.analysis.' + name)}, {_lua_string(title)})"
        )
        field_vars.append(var)
    expert_vars = []
    rows = []
    for index, meaning in enumerate(KINDS.values()):
        var = f"e_an_{index}"
        title = meaning.name[0].upper() + meaning.name[1:]
        lines.append(
            f"local {var} = ProtoExpert.new({_lua_string('slrudp.expert.' + meaning.kind)}, "
            f"{_lua_string(title)}, expert.group.{_EXPERT_GROUP[meaning.group]}, "
            f"expert.severity.{_EXPERT_SEVERITY[meaning.severity]})"
        )
        expert_vars.append(var)
        flags = ", ".join(f"f_an_{flag}" for flag in meaning.flags)
        field = f"f_an_{meaning.value_field}" if meaning.value_field else "nil"
        value = _lua_string(meaning.value) if meaning.value is not None else "nil"
        rows.append(
            f"    [{_lua_string(meaning.kind)}] = {{ flags = {{ {flags} }}, field = {field}, "
            f"value = {value}, expert = {var}, title = {_lua_string(title)}, "
            f"label = {_lua_string(meaning.label)} }},"
        )
    lines.append("local analysis_kinds = {")
    lines.extend(rows)
    lines.append("}")
    return "\n".join(lines), ", ".join(field_vars), ", ".join(expert_vars)


def generate_dissector(ports: Ports = Ports()) -> str:  # noqa: B008 - frozen, immutable
    """The Lua source of the dissector; ``ports`` are the preference defaults."""
    declarations, field_list, tree_adds = _rudp_fields()
    flag_at, flag_size = _offset_of(_FLAG_FIELD)
    len_at, len_size = _offset_of(_LENGTH_FIELD)
    flag_bytes = ", ".join(f"[{flag.value[0]:#04x}] = true" for flag in Flag)
    analysis, analysis_fields, analysis_experts = _analysis()
    return _TEMPLATE.format(
        declarations=declarations,
        analysis=analysis,
        analysis_fields=analysis_fields,
        analysis_experts=analysis_experts,
        field_list=field_list,
        tree_adds=tree_adds,
        flag_bytes=flag_bytes,
        header_len=RUDP_HEADER_LEN,
        len_field=_LENGTH_FIELD,
        flag_field=_FLAG_FIELD,
        flag_at=flag_at,
        flag_size=flag_size,
        len_at=len_at,
        len_size=len_size,
        prefix_len=FRAME_PREFIX_LEN,
        rudp_port=ports.rudp,
        app_port=ports.app,
        dhcp_port=ports.dhcp,
        dns_port=ports.dns,
    )


_TEMPLATE: Final = """\
-- stacklab Wireshark dissector, generated by `stacklab dissector` from
-- stacklab.wire (do not edit: regenerate).  Load it with
--   wireshark -X lua_script:stacklab.lua   or   tshark -X lua_script:stacklab.lua
-- or copy it into the personal Lua plugins folder.
-- Protocols: slrudp (RUDP), slframe (app frames over TCP), sldhcp and sldns
-- (JSON over UDP).  Ports are preferences; all four are offered in Decode As.

local udp_table = DissectorTable.get("udp.port")
local tcp_table = DissectorTable.get("tcp.port")
local json_dissector = Dissector.get("json")
-- What each port carried before we took it (5353: mDNS), for non-JSON content.
local previous = {{}}

---------------------------------------------------------------------------
-- RUDP: the fields below are generated from RUDP_HEADER_FIELDS
---------------------------------------------------------------------------

local slrudp = Proto("slrudp", "stacklab RUDP")
{declarations}
local f_rudp_payload = ProtoField.bytes("slrudp.payload", "Payload")
local f_rudp_padding = ProtoField.bytes("slrudp.padding", "Bytes beyond the length field")
local f_rudp_crc = ProtoField.uint32("slrudp.crc32c", "CRC32C trailer", base.HEX)
local crc_status_names = {{ [0] = "Bad", [1] = "Good", [2] = "Unverified" }}
local f_rudp_crc_status = ProtoField.uint8("slrudp.crc32c.status", "CRC32C status", base.DEC, crc_status_names)
local f_rudp_options = ProtoField.string("slrudp.options", "Options (JSON)")
local f_rudp_opt_v = ProtoField.uint32("slrudp.options.v", "Options version", base.DEC)
local f_rudp_opt_chunk = ProtoField.uint32("slrudp.options.chunk", "Chunk size", base.DEC)
local f_rudp_opt_window = ProtoField.uint32("slrudp.options.window", "Maximum window", base.DEC)
local f_rudp_opt_integrity = ProtoField.bool("slrudp.options.integrity", "Integrity (CRC32C trailer)")
local f_rudp_opt_ack_every = ProtoField.uint32("slrudp.options.ack_every", "ACK every", base.DEC)
local f_rudp_short = ProtoField.bytes("slrudp.truncated", "Datagram shorter than the RUDP header")
local f_rudp_gso_segment = ProtoField.uint16("slrudp.gso.segment", "GSO segment", base.DEC)
local f_rudp_gso_count = ProtoField.uint16("slrudp.gso.count", "GSO segments in the datagram", base.DEC)
{analysis}
slrudp.fields = {{ {field_list}, f_rudp_payload, f_rudp_padding, f_rudp_crc, f_rudp_crc_status,
    f_rudp_options, f_rudp_opt_v, f_rudp_opt_chunk, f_rudp_opt_window, f_rudp_opt_integrity,
    f_rudp_opt_ack_every, f_rudp_short, f_rudp_gso_segment, f_rudp_gso_count, {analysis_fields} }}

local e_rudp_short = ProtoExpert.new("slrudp.short", "Length field claims more bytes than present",
    expert.group.MALFORMED, expert.severity.WARN)
local e_rudp_flag = ProtoExpert.new("slrudp.unknown_flag", "Unknown flag byte",
    expert.group.PROTOCOL, expert.severity.WARN)
local e_rudp_too_short = ProtoExpert.new("slrudp.too_short",
    "Datagram shorter than the {header_len}-byte RUDP header",
    expert.group.MALFORMED, expert.severity.ERROR)
local e_rudp_bad_crc = ProtoExpert.new("slrudp.crc32c.bad", "Bad CRC32C trailer",
    expert.group.CHECKSUM, expert.severity.ERROR)
local e_rudp_gso_bad = ProtoExpert.new("slrudp.gso.bad",
    "Bytes beyond the length field that are not a GSO batch of RUDP segments",
    expert.group.MALFORMED, expert.severity.WARN)
slrudp.experts = {{ e_rudp_short, e_rudp_flag, e_rudp_too_short, e_rudp_bad_crc, e_rudp_gso_bad,
    {analysis_experts} }}

-- The verifier's findings, read from the frame's comments that `stacklab annotate`
-- writes ("stacklab: KIND: TEXT"), shown as slrudp.analysis.* and Expert Info
-- (severities and groups as tcp.analysis.* uses them).
local f_frame_comment = Field.new("frame.comment")

local function add_analysis(subtree, tvb)
    local labels = {{}}
    local analysis = nil
    for _, comment in ipairs({{ f_frame_comment() }}) do
        local kind, text = tostring(comment.value):match("^stacklab: ([%w_%.]+): (.*)$")
        local meaning = kind and analysis_kinds[kind]
        if meaning then
            if analysis == nil then
                analysis = subtree:add(f_an, tvb(0, 0))
                analysis:set_generated()
            end
            for _, flag in ipairs(meaning.flags) do
                analysis:add(flag, tvb(0, 0)):set_generated()
            end
            if meaning.field then
                local value = meaning.value or text:match("^([^:]+)")
                analysis:add(meaning.field, tvb(0, 0), value):set_generated()
            end
            analysis:add_proto_expert_info(meaning.expert, meaning.title .. ": " .. text)
            labels[#labels + 1] = meaning.label
        end
    end
    return labels
end

-- CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as stacklab.wire computes it
local band, bxor, rshift = bit32.band, bit32.bxor, bit32.rshift
local crc_table = {{}}
for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
        if band(c, 1) == 1 then
            c = bxor(rshift(c, 1), 0x82F63B78)
        else
            c = rshift(c, 1)
        end
    end
    crc_table[i] = c
end
local function crc32c(bytes)
    local c = 0xFFFFFFFF
    for i = 0, bytes:len() - 1 do
        c = bxor(crc_table[band(bxor(c, bytes:get_index(i)), 0xFF)], rshift(c, 8))
    end
    return bxor(c, 0xFFFFFFFF)
end

-- Conversations whose SYN-ACK accepted integrity: there a trailer that does not
-- match is a bad one (elsewhere it is ordinary content).  Keyed by the
-- conversation, recorded when the SYN-ACK is first dissected.
local integrity_sessions = {{}}
local function conversation_key(pinfo)
    local a = tostring(pinfo.src) .. ":" .. pinfo.src_port
    local b = tostring(pinfo.dst) .. ":" .. pinfo.dst_port
    if a < b then
        return a .. "|" .. b
    end
    return b .. "|" .. a
end

local function add_options(subtree, range)
    local text = range:string()
    subtree:add(f_rudp_options, range)
    local function number(key, field)
        local value = text:match('"' .. key .. '"%s*:%s*(%d+)')
        if value ~= nil then
            subtree:add(field, range, tonumber(value))
        end
    end
    number("v", f_rudp_opt_v)
    number("chunk", f_rudp_opt_chunk)
    number("window", f_rudp_opt_window)
    number("ack_every", f_rudp_opt_ack_every)
    local integrity = text:match('"integrity"%s*:%s*(%a+)')
    if integrity ~= nil then
        subtree:add(f_rudp_opt_integrity, range, integrity == "true")
    end
    return integrity == "true"
end

local rudp_known_flags = {{ {flag_bytes} }}
local RUDP_HEADER_LEN = {header_len}

slrudp.prefs.port = Pref.uint("UDP port", {rudp_port}, "UDP port of the RUDP app server")
slrudp.prefs.heuristic = Pref.bool("Heuristic on every UDP port", false,
    "Recognise RUDP on any UDP port: known flag and a length field equal to the payload")

local function flag_text(byte)
    if byte >= 0x20 and byte < 0x7f then
        return string.char(byte)
    end
    return string.format("\\\\x%02x", byte)
end

-- UDP GSO batches (stacklab.gso has the same rules): a loopback capture records a
-- buffer the kernel cut into equal datagrams as ONE datagram.  Per conversation,
-- the segment limit its SYN-ACK set: 11 + chunk (+ 4 with integrity), -1 for a
-- session without options (the original protocol never batches), nil when unknown.
local awaiting_synack = {{}}
local segment_limits = {{}}

local function learn_session(tvb, pinfo, key)
    if pinfo.visited or tvb:len() < RUDP_HEADER_LEN then
        return
    end
    local flag = tvb({flag_at}, {flag_size}):uint()
    local me = tostring(pinfo.src) .. ":" .. pinfo.src_port
    if flag == 0x53 then
        awaiting_synack[key] = me
        segment_limits[key] = nil
    elseif flag == 0x41 and awaiting_synack[key] ~= nil and awaiting_synack[key] ~= me then
        awaiting_synack[key] = nil
        local limit = -1
        if tvb:len() > RUDP_HEADER_LEN and tvb(RUDP_HEADER_LEN, 1):uint() == 0x7b then
            local text = tvb(RUDP_HEADER_LEN):raw()
            local chunk = tonumber(text:match('"chunk"%s*:%s*(%d+)'))
            limit = 0
            if chunk ~= nil and chunk >= 1 then
                limit = RUDP_HEADER_LEN + chunk
                if text:match('"integrity"%s*:%s*true') then
                    limit = limit + 4
                end
            end
        end
        segment_limits[key] = limit
    end
end

local function gso_split(tvb, limit)
    local total = tvb:len()
    if limit == -1 then
        return nil, "bytes beyond the length field in a session without negotiated options: "
            .. "the original protocol never sends GSO batches"
    end
    local bounds = {{ 0 }}
    local pos = 0
    while pos < total do
        local left = total - pos
        local index = #bounds
        if left < RUDP_HEADER_LEN then
            return nil, string.format("GSO segment %d is %d bytes, shorter than the %d-byte RUDP header",
                index, left, RUDP_HEADER_LEN)
        end
        local length = tvb(pos + {len_at}, {len_size}):uint()
        local stop = pos + RUDP_HEADER_LEN + length
        if stop > total then
            return nil, string.format("GSO segment %d has length field %d, only %d bytes left",
                index, length, left - RUDP_HEADER_LEN)
        end
        bounds[#bounds + 1] = stop
        pos = stop
    end
    local size = bounds[2] - bounds[1]
    local count = #bounds - 1
    for index = 1, count do
        local got = bounds[index + 1] - bounds[index]
        if got ~= size and not (index == count and got < size) then
            return nil, string.format("GSO segment %d is %d bytes where the batch's segments are %d: "
                .. "length fields that disagree with the segment size", index, got, size)
        end
    end
    if limit ~= nil and limit > 0 and size > limit then
        return nil, string.format("GSO segments of %d bytes, larger than the session's negotiated "
            .. "%d (header, chunk and trailer)", size, limit)
    end
    return bounds
end

-- One RUDP datagram (or one segment of a GSO batch): its own tree item; returns the Info text.
local function dissect_segment(tvb, pinfo, tree, key, index, count, gso_error)
    local total = tvb:len()
    local subtree = tree:add(slrudp, tvb(0, total))
{tree_adds}
    local present = total - RUDP_HEADER_LEN
    local payload_len = math.min(v_{len_field}, present)  -- slrudp.payload: all of it
    -- The CRC32C trailer of a session that negotiated integrity: the last 4
    -- bytes, counted in the length field (see stacklab.wire.rudp_trailer_ok).
    local crc_status = nil
    if present == v_{len_field} and present >= 4 then
        local computed = crc32c(tvb(0, total - 4):bytes())
        if computed == tvb(total - 4, 4):uint() then
            crc_status = 1
        elseif integrity_sessions[key] then
            crc_status = 0
        end
    end
    local content_len = payload_len
    if crc_status ~= nil then
        content_len = payload_len - 4
    end
    if payload_len > 0 then
        subtree:add(f_rudp_payload, tvb(RUDP_HEADER_LEN, payload_len))
    end
    -- A stacklab SYN carries its options as JSON; the SYN-ACK (flag A, ack = ISN + 1,
    -- seq a cookie) the accepted ones.
    local is_synack = v_{flag_field} == 0x41 and v_seq ~= 0 and v_ack ~= 0 and content_len > 0
    if content_len > 0 and (v_{flag_field} == 0x53 or is_synack)
            and tvb(RUDP_HEADER_LEN, 1):uint() == 0x7b then
        local accepted = add_options(subtree, tvb(RUDP_HEADER_LEN, content_len))
        if is_synack and accepted and not pinfo.visited then
            integrity_sessions[key] = true
        end
    end
    if crc_status ~= nil then
        subtree:add(f_rudp_crc, tvb(total - 4, 4))
        local status = subtree:add(f_rudp_crc_status, tvb(total - 4, 4), crc_status)
        status:set_generated()
        if crc_status == 0 then
            status:add_proto_expert_info(e_rudp_bad_crc)
        end
    end
    if present > v_{len_field} then
        subtree:add(f_rudp_padding, tvb(RUDP_HEADER_LEN + v_{len_field}, present - v_{len_field}))
        if gso_error ~= nil then
            subtree:add_proto_expert_info(e_rudp_gso_bad, "Not a GSO batch: " .. gso_error)
        end
    elseif present < v_{len_field} then
        subtree:add_proto_expert_info(e_rudp_short)
    end
    if not rudp_known_flags[v_{flag_field}] then
        subtree:add_proto_expert_info(e_rudp_flag)
    end
    local info = string.format("%s seq=%d ack=%d len=%d", flag_text(v_{flag_field}), v_seq, v_ack, v_{len_field})
    if index ~= nil then
        subtree:add(f_rudp_gso_segment, tvb(0, 0), index):set_generated()
        subtree:add(f_rudp_gso_count, tvb(0, 0), count):set_generated()
        subtree:append_text(string.format(", GSO segment %d/%d", index, count))
    end
    if index == nil or index == 1 then
        local labels = add_analysis(subtree, tvb)
        if #labels > 0 then
            info = "[" .. table.concat(labels, ", ") .. "] " .. info
        end
    end
    subtree:append_text(", " .. info)
    return info
end

function slrudp.dissector(tvb, pinfo, tree)
    local total = tvb:len()
    pinfo.cols.protocol = "SLRUDP"
    if total < RUDP_HEADER_LEN then
        local subtree = tree:add(slrudp, tvb())
        if total > 0 then
            subtree:add(f_rudp_short, tvb())
        end
        subtree:add_proto_expert_info(e_rudp_too_short)
        pinfo.cols.info = string.format("Malformed: %d bytes, shorter than the RUDP header", total)
        return total
    end
    local key = conversation_key(pinfo)
    local gso_error = nil
    if total > RUDP_HEADER_LEN + tvb({len_at}, {len_size}):uint() then
        local bounds, why = gso_split(tvb, segment_limits[key])
        if bounds ~= nil then
            local count = #bounds - 1
            local infos = {{}}
            for index = 1, count do
                local segment = tvb(bounds[index], bounds[index + 1] - bounds[index]):tvb()
                learn_session(segment, pinfo, key)
                infos[index] = dissect_segment(segment, pinfo, tree, key, index, count, nil)
            end
            pinfo.cols.info = string.format("[GSO %d segments] ", count) .. table.concat(infos, " | ")
            return total
        end
        gso_error = why
    end
    learn_session(tvb, pinfo, key)
    pinfo.cols.info = dissect_segment(tvb, pinfo, tree, key, nil, nil, gso_error)
    return total
end


local function slrudp_heuristic(tvb, pinfo, tree)
    if not slrudp.prefs.heuristic then
        return false
    end
    local total = tvb:len()
    if total < RUDP_HEADER_LEN then
        return false
    end
    if not rudp_known_flags[tvb({flag_at}, {flag_size}):uint()] then
        return false
    end
    if tvb({len_at}, {len_size}):uint() ~= total - RUDP_HEADER_LEN then
        return false
    end
    slrudp.dissector(tvb, pinfo, tree)
    return true
end
slrudp:register_heuristic("udp", slrudp_heuristic)

---------------------------------------------------------------------------
-- App frames over TCP: {prefix_len} ASCII digits of length, then the body
---------------------------------------------------------------------------

local slframe = Proto("slframe", "stacklab app frame")
local f_frame_len = ProtoField.uint64("slframe.len", "Body length", base.DEC)
local f_frame_body = ProtoField.string("slframe.body", "Body")
slframe.fields = {{ f_frame_len, f_frame_body }}
slframe.prefs.port = Pref.uint("TCP port", {app_port}, "TCP port of the app server")

local FRAME_PREFIX_LEN = {prefix_len}

local function frame_prefix_ok(tvb, offset)
    if tvb:len() - offset < FRAME_PREFIX_LEN then
        return true  -- not enough bytes to tell yet
    end
    return tvb(offset, FRAME_PREFIX_LEN):string():match("^%d+$") ~= nil
end

local function frame_pdu_len(tvb, pinfo, offset)
    local digits = tvb(offset, FRAME_PREFIX_LEN):string()
    if not digits:match("^%d+$") then
        return 0
    end
    return FRAME_PREFIX_LEN + tonumber(digits)
end

local function frame_pdu(tvb, pinfo, tree)
    local length = tonumber(tvb(0, FRAME_PREFIX_LEN):string())
    local before = tostring(pinfo.cols.info)
    pinfo.cols.protocol = "SLFRAME"
    local subtree = tree:add(slframe, tvb())
    subtree:add(f_frame_len, tvb(0, FRAME_PREFIX_LEN), UInt64(length))
    local summary = string.format("App frame len=%d", length)
    if length > 0 then
        local body = tvb(FRAME_PREFIX_LEN, length)
        subtree:add(f_frame_body, body)
        summary = summary .. " " .. body:raw(0, math.min(length, 60)):gsub("[%c]", ".")
    end
    subtree:append_text(string.format(", len=%d", length))
    if before:find("^App frame") then
        -- several frames in one segment: the text of the earlier ones is fenced and stays
        summary = " | " .. summary
    end
    pinfo.cols.info = summary
    return tvb:len()
end

function slframe.dissector(tvb, pinfo, tree)
    if not frame_prefix_ok(tvb, 0) then
        return 0
    end
    dissect_tcp_pdus(tvb, tree, FRAME_PREFIX_LEN, frame_pdu_len, frame_pdu, true)
    return tvb:len()
end

---------------------------------------------------------------------------
-- DHCP and DNS: JSON objects over UDP, handed to the json dissector
---------------------------------------------------------------------------

local sldhcp = Proto("sldhcp", "stacklab DHCP (JSON)")
local f_dhcp_keyword = ProtoField.string("sldhcp.keyword", "Keyword (not JSON)")
sldhcp.fields = {{ f_dhcp_keyword }}
sldhcp.prefs.port = Pref.uint("UDP port", {dhcp_port}, "UDP port of the DHCP server")

local sldns = Proto("sldns", "stacklab DNS (JSON)")
local f_dns_text = ProtoField.string("sldns.text", "Text (not JSON)")
sldns.fields = {{ f_dns_text }}
sldns.prefs.port = Pref.uint("UDP port", {dns_port}, "UDP port of the DNS server (5353 is shared with mDNS)")

local function starts_with_brace(tvb)
    local n = tvb:len()
    local i = 0
    while i < n do
        local b = tvb(i, 1):uint()
        if b == 0x7b then
            return true
        end
        if b ~= 0x20 and b ~= 0x09 and b ~= 0x0a and b ~= 0x0d then
            return false
        end
        i = i + 1
    end
    return false
end

local function json_message(proto, label, tvb, pinfo, tree)
    local subtree = tree:add(proto, tvb())
    if json_dissector ~= nil then
        json_dissector:call(tvb, pinfo, subtree)
    end
    pinfo.cols.protocol = label
    pinfo.cols.info = label .. " " .. tvb():raw(0, math.min(tvb:len(), 80)):gsub("[%c]", " ")
    return tvb:len()
end

function sldhcp.dissector(tvb, pinfo, tree)
    if tvb:len() == 0 then
        return 0
    end
    if starts_with_brace(tvb) then
        return json_message(sldhcp, "DHCP-JSON", tvb, pinfo, tree)
    end
    local subtree = tree:add(sldhcp, tvb())
    subtree:add(f_dhcp_keyword, tvb())
    pinfo.cols.protocol = "DHCP-JSON"
    pinfo.cols.info = "DHCP " .. tvb():raw(0, math.min(tvb:len(), 60)):gsub("[%c]", ".")
    return tvb:len()
end

function sldns.dissector(tvb, pinfo, tree)
    if tvb:len() == 0 then
        return 0
    end
    if starts_with_brace(tvb) then
        return json_message(sldns, "DNS-JSON", tvb, pinfo, tree)
    end
    local original = previous[sldns.prefs.port]
    if original ~= nil then
        return original:call(tvb, pinfo, tree)
    end
    local subtree = tree:add(sldns, tvb())
    subtree:add(f_dns_text, tvb())
    pinfo.cols.protocol = "DNS-JSON"
    return tvb:len()
end

---------------------------------------------------------------------------
-- Ports: registered from the preferences, re-registered when they change
---------------------------------------------------------------------------

local registered = {{}}

local function register(proto, tbl, port)
    local key = proto.name
    local old = registered[key]
    if old ~= nil then
        tbl:remove(old, proto)
        if proto == sldns and previous[old] ~= nil then
            tbl:add(old, previous[old])  -- give the port back (mDNS)
            previous[old] = nil
        end
    end
    if port ~= 0 then
        if proto == sldns then
            previous[port] = tbl:get_dissector(port)
        end
        tbl:add(port, proto)
    end
    registered[key] = port
end

local function register_all()
    register(slrudp, udp_table, slrudp.prefs.port)
    register(slframe, tcp_table, slframe.prefs.port)
    register(sldhcp, udp_table, sldhcp.prefs.port)
    register(sldns, udp_table, sldns.prefs.port)
end

slrudp.prefs_changed = register_all
slframe.prefs_changed = register_all
sldhcp.prefs_changed = register_all
sldns.prefs_changed = register_all

udp_table:add_for_decode_as(slrudp)
tcp_table:add_for_decode_as(slframe)
udp_table:add_for_decode_as(sldhcp)
udp_table:add_for_decode_as(sldns)
register_all()
"""
