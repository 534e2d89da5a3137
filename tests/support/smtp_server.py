"""A real SMTP server for the relay tests (Debian's python3-aiosmtpd).

Stores every message in a Maildir and appends one JSON line per message to
mails.jsonl in that directory (envelope, threading headers and decoded
bodies), so tests can check what was delivered.

usage: smtp_server.py PORT MAILDIR MODE(starttls|implicit|plain) [CERT KEY USER PASSWORD]

With AUTH, PLAIN and LOGIN take USER/PASSWORD and XOAUTH2 takes USER with
PASSWORD as the bearer token; each attempt is appended to auths.jsonl
(mechanism and outcome, never the secret).

SMTP_REJECT_RCPT: comma-separated addresses answered "550 5.1.1" at RCPT
TO; each refusal is appended to rejects.jsonl.

SMTP_DELAY_SUBJECT / SMTP_DELAY_SECONDS: a message whose Subject contains
that text is held this long before it is stored and answered (a slow send);
a client that disconnects meanwhile leaves nothing stored.

Lines are limited as RFC 5321 4.5.3.1.6 and RFC 5322 2.1.1 say: 1000 octets
with the CRLF (998 characters). A message with a longer line is refused
with "500 Line too long", as Postfix and aiosmtpd itself do (aiosmtpd's own
limit is one octet more lenient).
"""
import asyncio
import email
import email.policy
import json
import mailbox
import os
import ssl
import sys
import time
from base64 import b64decode

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult

# The StreamReader limit: a line (CRLF included) longer than this is refused.
SMTP.line_length_limit = 1000


def append(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        if not os.environ.get("SMTP_NO_FSYNC"):
            os.fsync(f.fileno())


class Store:
    def __init__(self, path, user=None, token=None):
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        self.box = mailbox.Maildir(path, create=True)
        self.dir = path
        self.log = os.path.join(path, "mails.jsonl")
        self.user, self.token = user, token
        self.reject = {a.strip().lower() for a in os.environ.get("SMTP_REJECT_RCPT", "").split(",") if a.strip()}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            append(os.path.join(self.dir, "rejects.jsonl"), {"rcpt": address})
            return "550 5.1.1 Mailbox unavailable"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def auth_XOAUTH2(self, server, args):
        """RFC-less but widely used: base64 of
        "user=<user>\x01auth=Bearer <token>\x01\x01" (Gmail, Microsoft 365)."""
        if len(args) == 2:
            try:
                blob = b64decode(args[1], validate=True)
            except ValueError:
                return AuthResult(success=False, handled=False)
        else:
            blob = await server.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        expected = f"user={self.user}\x01auth=Bearer {self.token}\x01\x01".encode()
        ok = self.token is not None and blob == expected
        append(os.path.join(self.dir, "auths.jsonl"), {"mechanism": "XOAUTH2", "ok": ok})
        return AuthResult(success=ok, handled=False, auth_data=self.user if ok else None)

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        marker = os.environ.get("SMTP_DELAY_SUBJECT")
        if marker and marker in str(msg.get("Subject", "")):
            await asyncio.sleep(float(os.environ.get("SMTP_DELAY_SECONDS", "5")))
        self.box.add(raw)
        text = html = ""
        for part in msg.walk():
            ctype = part.get_content_type()
            if ctype == "text/plain" and not text:
                text = part.get_content()
            elif ctype == "text/html" and not html:
                html = part.get_content()
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg.get("From", "")),
            "to": str(msg.get("To", "")),
            "subject": str(msg.get("Subject", "")),
            "message_id": str(msg.get("Message-ID", "")),
            "in_reply_to": str(msg.get("In-Reply-To", "")),
            "references": str(msg.get("References", "")),
            "content_type": msg.get_content_type(),
            "text": text,
            "html": html,
        }
        append(self.log, record)
        return "250 Message accepted for delivery"


def main():
    port, path, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    kwargs = {}
    if mode != "plain":
        cert, key, user, password = sys.argv[4:8]
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login.decode() == user and auth_data.password.decode() == password
            append(os.path.join(path, "auths.jsonl"), {"mechanism": mechanism, "ok": ok})
            return AuthResult(success=ok)

        kwargs.update(authenticator=authenticator, auth_required=True)
        if mode == "starttls":
            kwargs.update(tls_context=ctx, require_starttls=True, auth_require_tls=True)
        else:
            kwargs.update(ssl_context=ctx, auth_require_tls=False)
    store = Store(path, *sys.argv[6:8]) if mode != "plain" else Store(path)
    controller = Controller(store, hostname="127.0.0.1", port=port,
                            server_hostname="localhost", ready_timeout=30, **kwargs)
    controller.start()
    print("READY", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
