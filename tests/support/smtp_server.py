"""A real SMTP server for the relay tests (Debian's python3-aiosmtpd).

Stores every message in a Maildir and appends one JSON line per message to
mails.jsonl in that directory (envelope, threading headers and decoded
bodies), so tests can check what was delivered.

usage: smtp_server.py PORT MAILDIR MODE(starttls|implicit|plain) [CERT KEY USER PASSWORD]
"""
import email
import email.policy
import json
import mailbox
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Store:
    def __init__(self, path):
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        self.box = mailbox.Maildir(path, create=True)
        self.log = os.path.join(path, "mails.jsonl")

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        self.box.add(raw)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
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
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            if not os.environ.get("SMTP_NO_FSYNC"):
                os.fsync(f.fileno())
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
            return AuthResult(success=ok)

        kwargs.update(authenticator=authenticator, auth_required=True)
        if mode == "starttls":
            kwargs.update(tls_context=ctx, require_starttls=True, auth_require_tls=True)
        else:
            kwargs.update(ssl_context=ctx, auth_require_tls=False)
    controller = Controller(Store(path), hostname="127.0.0.1", port=port,
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
