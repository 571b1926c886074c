#!/usr/bin/env python3
"""An independent verifier of evidence bundles, written from docs/evidence.md ("Bundles")
and docs/chain.md alone.

    verify_bundle.py BUNDLE_FILE CA_PEM [PROTO_PY_DIR]

PROTO_PY_DIR holds the Python classes generated from proto/ (grpc_tools.protoc
--python_out); without it they are generated into a temporary directory from the proto/
directory next to this one. Prints a one-line summary and exits 0 when the bundle is valid;
prints the reason and exits 1 otherwise.
"""

import base64
import binascii
import datetime
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

FORMAT = "recorder-evidence-bundle/v1"
FIELDS = ["format", "session", "host", "origin", "exported_unix_nano", "certificates",
          "policy", "records"]
RECORD_FIELDS = ["chain_id", "seq", "log_index", "prev", "event", "proof"]
TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
EM_DASH = "\u2014"
ED25519 = 0x01
COSIGNATURE_V1 = 0x04


class Invalid(Exception):
    """The bundle fails; the message says where."""


# --- encodings ---------------------------------------------------------------------------

def b64(text, what):
    """Standard padded base64, in its one spelling."""
    if not isinstance(text, str):
        raise Invalid(f"{what} is not a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise Invalid(f"{what} is not standard padded base64: {e}") from None
    # Python ignores non-zero trailing bits; the format has one spelling per byte string.
    if base64.b64encode(data).decode() != text:
        raise Invalid(f"{what} is not canonical base64")
    return data


def decimal(text, what):
    """A decimal u64 without leading zeros."""
    if not text or not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise Invalid(f"{what} {text!r} is not a decimal without leading zeros")
    value = int(text)
    if value >= 2**64:
        raise Invalid(f"{what} {text!r} is too large")
    return value


def u64(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise Invalid(f"{what} is not an unsigned 64-bit integer")
    return value


def string(value, what):
    if not isinstance(value, str):
        raise Invalid(f"{what} is not a string")
    return value


def no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise Invalid(f"field {key!r} appears twice")
        obj[key] = value
    return obj


def exact_fields(obj, fields, what):
    if not isinstance(obj, dict) or set(obj) != set(fields):
        raise Invalid(f"{what} does not have exactly the fields {', '.join(fields)}")


# --- chain.md ------------------------------------------------------------------------------

def chain_hash(chain_id, seq, prev, event):
    c = chain_id.encode()
    h = hashlib.sha256()
    h.update(b"recorder.chain.v1\x00")
    h.update(struct.pack(">Q", len(c)) + c)
    h.update(struct.pack(">Q", seq))
    h.update(prev)
    h.update(struct.pack(">Q", len(event)) + event)
    return h.digest()


# --- RFC 6962 / 9162 -------------------------------------------------------------------------

def leaf_hash(entry):
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion(index, size, leaf, proof):
    """RFC 9162 section 2.1.3.2; None when the proof does not fit the index and size."""
    if index >= size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


# --- c2sp.org/signed-note, tlog-checkpoint, tlog-cosignature ---------------------------------

def key_id(name, sig_type, public_key):
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


def check_key_name(name, what):
    if not name or "+" in name or any(c.isspace() or ord(c) < 0x20 for c in name):
        raise Invalid(f"{what}: key name {name!r} is empty or holds a space, + or control")


class Vkey:
    def __init__(self, text, sig_type, what):
        parts = text.split("+", 2)
        if len(parts) != 3:
            raise Invalid(f"{what}: {text!r} is not a vkey (name+keyid+key)")
        self.name, hex_id, key = parts
        check_key_name(self.name, what)
        if len(hex_id) != 8 or any(c not in "0123456789abcdef" for c in hex_id):
            raise Invalid(f"{what}: the key ID is not 8 lowercase hex digits")
        raw = b64(key, f"{what}: the key")
        if len(raw) != 33 or raw[0] != sig_type:
            raise Invalid(f"{what}: the key is not type {sig_type:#04x} with 32 bytes")
        self.public = raw[1:]
        self.id = key_id(self.name, sig_type, self.public)
        if self.id.hex() != hex_id:
            raise Invalid(f"{what}: the key ID does not match the key")
        self.key = Ed25519PublicKey.from_public_bytes(self.public)
        self.text = text


def parse_note(text, what):
    """Splits a signed note at its last blank line: (body, [(name, key id, signature)])."""
    if not text.endswith("\n"):
        raise Invalid(f"{what}: the note does not end in a newline")
    if any((ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F for c in text):
        raise Invalid(f"{what}: the note holds a control character")
    split = text.rfind("\n\n")
    if split < 0:
        raise Invalid(f"{what}: the note has no signature block")
    body, block = text[: split + 1], text[split + 2:]
    signatures = []
    for line in block[:-1].split("\n") if block else []:
        if not line.startswith(EM_DASH + " "):
            raise Invalid(f"{what}: {line!r} is not a signature line")
        rest = line[2:].split(" ")
        if len(rest) != 2:
            raise Invalid(f"{what}: {line!r} is not '— name signature'")
        name, sig = rest
        check_key_name(name, what)
        raw = b64(sig, f"{what}: a signature")
        if len(raw) < 5:
            raise Invalid(f"{what}: a signature is too short")
        signatures.append((name, raw[:4], raw[4:]))
    if not signatures:
        raise Invalid(f"{what}: the note has no signatures")
    return body, signatures


def parse_checkpoint(body, what):
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise Invalid(f"{what}: the checkpoint has fewer than three lines")
    origin, size, root = lines[0], decimal(lines[1], f"{what}: size"), b64(lines[2], f"{what}: root")
    if not origin or len(root) != 32 or any(not ext for ext in lines[3:]):
        raise Invalid(f"{what}: the checkpoint body is malformed")
    return origin, size, root


# --- c2sp.org/tlog-policy ----------------------------------------------------------------------

class TrustPolicy:
    def __init__(self, text):
        self.logs, self.witnesses, self.groups, self.quorum = [], {}, {}, None
        order = []
        members = set()
        for number, line in enumerate(text.split("\n"), 1):
            what = f"policy line {number}"
            if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in line):
                raise Invalid(f"{what}: a control character")
            items = line.replace("\t", " ").split()
            if not items or items[0].startswith("#"):
                continue
            keyword, args = items[0], items[1:]
            if keyword == "log" and len(args) in (1, 2):
                self.logs.append(Vkey(args[0], ED25519, what))
            elif keyword == "witness" and len(args) in (2, 3):
                name = args[0]
                if name == "none" or name in self.witnesses or name in self.groups:
                    raise Invalid(f"{what}: {name!r} is defined twice or reserved")
                self.witnesses[name] = Vkey(args[1], COSIGNATURE_V1, what)
                order.append(name)
            elif keyword == "group" and len(args) >= 3:
                name, threshold, names = args[0], args[1], args[2:]
                if name == "none" or name in self.witnesses or name in self.groups:
                    raise Invalid(f"{what}: {name!r} is defined twice or reserved")
                for member in names:
                    if member not in self.witnesses and member not in self.groups:
                        raise Invalid(f"{what}: {member!r} is not defined on an earlier line")
                    if member in members:
                        raise Invalid(f"{what}: {member!r} is already a group member")
                    members.add(member)
                if threshold == "all":
                    k = len(names)
                elif threshold == "any":
                    k = 1
                else:
                    k = decimal(threshold, what)
                    if not 1 <= k <= len(names):
                        raise Invalid(f"{what}: the threshold is out of range")
                self.groups[name] = (k, names)
            elif keyword == "quorum" and len(args) == 1:
                if self.quorum is not None:
                    raise Invalid(f"{what}: a second quorum line")
                if args[0] != "none" and args[0] not in self.witnesses and args[0] not in self.groups:
                    raise Invalid(f"{what}: {args[0]!r} is not defined on an earlier line")
                self.quorum = args[0]
            else:
                raise Invalid(f"{what}: not a log, witness, group or quorum line")
        if self.quorum is None:
            raise Invalid("the policy has no quorum line")
        self.witness_order = order

    def met(self, cosigned):
        """Whether the set of witness names `cosigned` meets the quorum."""
        if self.quorum == "none":
            return True

        def holds(name):
            if name in self.witnesses:
                return name in cosigned
            k, names = self.groups[name]
            return sum(holds(n) for n in names) >= k

        return holds(self.quorum)

    def canonical(self):
        """The text docs/evidence.md gives for these keys."""
        out = [f"log {k.text}\n" for k in self.logs]
        out += [f"witness {n} {self.witnesses[n].text}\n" for n in self.witness_order]
        if self.witness_order:
            out.append(f"group w any {' '.join(self.witness_order)}\n")
            out.append("quorum w\n")
        else:
            out.append("quorum none\n")
        return "".join(out)


# --- the bundle ----------------------------------------------------------------------------

def load_event_class(proto_dir):
    if proto_dir is None:
        here = os.path.dirname(os.path.abspath(__file__))
        proto_root = os.path.join(os.path.dirname(here), "proto")
        proto_dir = tempfile.mkdtemp(prefix="verify-bundle-")
        sources = sorted(os.path.join("recorder/v1", f)
                         for f in os.listdir(os.path.join(proto_root, "recorder/v1")))
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", proto_root,
                        f"--python_out={proto_dir}", *sources], check=True)
    sys.path.insert(0, proto_dir)
    from recorder.v1 import event_pb2  # pylint: disable=import-outside-toplevel
    return event_pb2.Event


def identity_uri(cert, what):
    """The one urn:recorder: URI among the subject alternative names."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise Invalid(f"{what}: no subject alternative names") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.lower().startswith("urn:recorder:")]
    if len(uris) != 1:
        raise Invalid(f"{what}: not exactly one recorder identity URI")
    return uris[0]


def check_certificates(bundle, ca):
    """Check 2: (kind, name, public key, not before, not after) of each certificate."""
    certs = []
    if not isinstance(bundle["certificates"], list):
        raise Invalid("certificates is not a list")
    for index, pem in enumerate(bundle["certificates"]):
        what = f"certificate {index}"
        string(pem, what)
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
        except ValueError as e:
            raise Invalid(f"{what}: not a PEM certificate: {e}") from None
        if cert.public_bytes(Encoding.PEM).decode() != pem:
            raise Invalid(f"{what}: not exactly one certificate in strict PEM")
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise Invalid(f"{what}: not issued by the CA: {e!r}") from None
        try:
            if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise Invalid(f"{what}: a CA certificate")
        except x509.ExtensionNotFound:
            pass
        uri = identity_uri(cert, what)
        if uri == f"urn:recorder:agent:host:{bundle['host']}":
            kind, name = "agent", bundle["host"]
        elif uri.startswith("urn:recorder:witness:") and uri.count(":") == 3:
            kind, name = "witness", uri.split(":")[3]
        else:
            raise Invalid(f"{what}: {uri} is neither the host's agent nor a witness")
        key = cert.public_key()
        if not isinstance(key, Ed25519PublicKey):
            raise Invalid(f"{what}: not an Ed25519 key")
        public = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        certs.append((kind, name, public, cert.not_valid_before_utc, cert.not_valid_after_utc))
    return certs


def check_policy(text, deployment, origin, certs):
    """Check 3."""
    policy = TrustPolicy(string(text, "policy"))
    line = 0
    for log in policy.logs:
        line += 1
        if log.name != origin:
            raise Invalid(f"policy line {line}: the log key is not named {origin}")
        if not any(k == "agent" and p == log.public for k, _, p, _, _ in certs):
            raise Invalid(f"policy line {line}: the log key is not an agent certificate's")
    for name in policy.witness_order:
        line += 1
        key = policy.witnesses[name]
        if not any(k == "witness" and key.name == f"{deployment}/recorder/witness/{n}"
                   and p == key.public for k, n, p, _, _ in certs):
            raise Invalid(f"policy line {line}: {key.name} is not the key of its witness certificate")
    if policy.quorum == "none" or not policy.witnesses:
        raise Invalid("the policy's quorum is none")
    if policy.canonical() != text:
        raise Invalid("the policy is not the one its keys give")
    return policy


def valid_at(certs, holds, time):
    at = datetime.datetime.fromtimestamp(time, datetime.timezone.utc)
    return any(holds(kind, name, public) and nb <= at <= na
               for kind, name, public, nb, na in certs)


def check_checkpoint(note_text, policy, deployment, origin, certs, what):
    """The checkpoint note of a proof: (size, root)."""
    body, signatures = parse_note(note_text, what)
    checkpoint_origin, size, root = parse_checkpoint(body, what)
    if checkpoint_origin != origin:
        raise Invalid(f"{what}: the checkpoint is of {checkpoint_origin}, not {origin}")
    logs = {(k.name, k.id): k for k in policy.logs}
    witnesses = {(k.name, k.id): n for n, k in policy.witnesses.items()}
    log_signed = []
    cosigned = {}
    for name, kid, sig in signatures:
        if (name, kid) in logs:
            key = logs[(name, kid)]
            try:
                key.key.verify(sig, body.encode())
            except InvalidSignature:
                raise Invalid(f"{what}: the signature by {name} does not verify") from None
            log_signed.append(key)
        elif (name, kid) in witnesses:
            witness = witnesses[(name, kid)]
            if len(sig) != 72:
                raise Invalid(f"{what}: the cosignature by {name} is not 72 bytes")
            (time,) = struct.unpack(">Q", sig[:8])
            if time >= 2**63:
                raise Invalid(f"{what}: the cosignature's time is out of range")
            message = f"cosignature/v1\ntime {time}\n".encode() + body.encode()
            try:
                policy.witnesses[witness].key.verify(sig[8:], message)
            except InvalidSignature:
                raise Invalid(f"{what}: the cosignature by {name} does not verify") from None
            cosigned[witness] = max(time, cosigned.get(witness, 0))
        else:
            raise Invalid(f"{what}: a signature by {name}+{kid.hex()}, a key the policy lacks")
    if not log_signed:
        raise Invalid(f"{what}: no signature by a log key of the policy")
    if not policy.met(set(cosigned)):
        raise Invalid(f"{what}: the cosignatures do not meet the quorum")
    for witness, time in cosigned.items():
        key = policy.witnesses[witness]
        if not valid_at(certs, lambda k, n, p, key=key: k == "witness" and p == key.public
                        and key.name == f"{deployment}/recorder/witness/{n}", time):
            raise Invalid(f"{what}: no certificate of {key.name} was valid at unix {time}")
    first = min(cosigned.values())
    for key in log_signed:
        if not valid_at(certs, lambda k, n, p, key=key: k == "agent" and p == key.public, first):
            raise Invalid(f"{what}: no certificate of {key.name} was valid at unix {first}")
    return size, root


def parse_proof(text, what):
    """A c2sp.org/tlog-proof: (index, hashes, note text)."""
    lines = text.split("\n")
    if len(lines) < 3 or lines[0] != TLOG_PROOF_HEADER:
        raise Invalid(f"{what}: not a {TLOG_PROOF_HEADER}")
    if lines[1].startswith("extra "):
        raise Invalid(f"{what}: the proof has an extra line, which nothing signs")
    if not lines[1].startswith("index "):
        raise Invalid(f"{what}: no index line")
    index = decimal(lines[1][len("index "):], f"{what}: index")
    hashes = []
    at = 2
    while at < len(lines) and lines[at] != "":
        digest = b64(lines[at], f"{what}: a proof hash")
        if len(digest) != 32:
            raise Invalid(f"{what}: a proof hash is not 32 bytes")
        hashes.append(digest)
        at += 1
    if at >= len(lines) or len(hashes) > 64:
        raise Invalid(f"{what}: the proof is malformed")
    return index, hashes, "\n".join(lines[at + 1:])


def verify(data, ca_pem, event_class):
    try:
        bundle = json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise Invalid(f"not JSON: {e}") from None
    exact_fields(bundle, FIELDS, "the bundle")
    if bundle["format"] != FORMAT:
        raise Invalid(f"format {bundle['format']!r} is not {FORMAT}")
    for field in ("session", "host", "origin", "policy"):
        string(bundle[field], field)
    u64(bundle["exported_unix_nano"], "exported_unix_nano")

    # 1. Names.
    ca = x509.load_pem_x509_certificate(ca_pem)
    deployment = hashlib.sha256(ca.public_bytes(Encoding.DER)).hexdigest()[:16]
    host = bundle["host"]
    if not host or ":" in host:
        raise Invalid(f"host {host!r} is not a host id")
    origin = f"{deployment}/recorder/host/{host}"
    if bundle["origin"] != origin:
        raise Invalid(f"origin {bundle['origin']!r} is not {origin!r}")
    parts = bundle["session"].rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host:
        raise Invalid(f"session {bundle['session']!r} is not HOST:SESSIONID:ROOT_START of the host")
    sessionid = decimal(parts[1], "the session id")
    root_start = decimal(parts[2], "the session's root start")
    if sessionid >= 2**32:
        raise Invalid("the session id is above 32 bits")

    # 2, 3.
    certs = check_certificates(bundle, ca)
    policy = check_policy(bundle["policy"], deployment, origin, certs)

    # 4, 5.
    records = bundle["records"]
    if not isinstance(records, list) or not records:
        raise Invalid("no records")
    checkpoints = {}
    previous = None
    for i, record in enumerate(records):
        exact_fields(record, RECORD_FIELDS, f"record {i}")
        seq = u64(record["seq"], f"record {i}: seq")
        what = f"record {i} (seq {seq})"
        chain_id = string(record["chain_id"], f"{what}: chain_id")
        log_index = u64(record["log_index"], f"{what}: log_index")
        if previous is not None and log_index <= previous:
            raise Invalid(f"{what}: log index {log_index} is not above {previous}")
        previous = log_index
        prev = b64(record["prev"], f"{what}: prev")
        if len(prev) != 32:
            raise Invalid(f"{what}: prev is not 32 bytes")
        event = b64(record["event"], f"{what}: event")
        if chain_id.split(":")[0] != host:
            raise Invalid(f"{what}: chain {chain_id!r} is not the host's")
        record_hash = chain_hash(chain_id, seq, prev, event)
        index, hashes, note = parse_proof(string(record["proof"], f"{what}: proof"), what)
        if index != log_index:
            raise Invalid(f"{what}: the proof is for index {index}, not {log_index}")
        if note not in checkpoints:
            checkpoints[note] = check_checkpoint(note, policy, deployment, origin, certs, what)
        size, root = checkpoints[note]
        if root_from_inclusion(index, size, leaf_hash(record_hash), hashes) != root:
            raise Invalid(f"{what}: the record is not in the checkpoint's tree")
        try:
            message = event_class.FromString(event)
        except Exception as e:  # pylint: disable=broad-except
            raise Invalid(f"{what}: the event does not decode: {e}") from None
        if message.HasField("process"):
            has_id, its_id = message.process.HasField("sessionid"), message.process.sessionid
        elif message.WhichOneof("body") == "kill":
            # A kill of the session, filed under it.
            has_id, its_id = message.kill.HasField("sessionid"), message.kill.sessionid
        else:
            has_id, its_id = False, 0
        if not (has_id and message.HasField("session_root")
                and its_id == sessionid
                and message.session_root.start_unix_nano == root_start):
            raise Invalid(f"{what}: the event is not of session {bundle['session']}")
    return f"{bundle['session']}: {len(records)} records of {origin}, proven against {len(checkpoints)} witnessed checkpoints"


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        data = f.read()
    with open(argv[2], "rb") as f:
        ca_pem = f.read()
    event_class = load_event_class(argv[3] if len(argv) == 4 else None)
    try:
        summary = verify(data, ca_pem, event_class)
    except Invalid as e:
        print(f"invalid bundle: {e}")
        return 1
    print(f"valid bundle: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
