"""Inbound mail parsing, pure: bytes to ParsedMail, HTML to text, reply text without history."""

from inbound.mail.html_text import html_to_text
from inbound.mail.parse import Attachment, Bounce, ParsedMail, parse_message
from inbound.mail.reply_text import extract_reply

__all__ = ["Attachment", "Bounce", "ParsedMail", "extract_reply", "html_to_text", "parse_message"]
