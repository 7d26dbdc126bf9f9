"""Every user-facing string of the client portal, in one place (translate here)."""

STRINGS: dict[str, str] = {
    "brand": "Secure messages",
    "open_title": "You have a secure message",
    "open_lead": "This link opens a private conversation with {org}.",
    "open_button": "Open my messages",
    "pin_label": "Your PIN",
    "pin_help": "Enter the PIN your provider gave you.",
    "pin_wrong": "That PIN is not right. Tries left before this link locks: {n}.",
    "unavailable_title": "This link can't be opened",
    "unavailable_lead": "The link has expired, was replaced, was locked after too many wrong PINs, "
                        "or is not valid.",
    "renew_lead": "If the link came from us, we can send a new one to the phone number or email "
                  "address we have on file for you.",
    "renew_button": "Send me a new link",
    "renew_done": "If this link was ours, a new one is on its way to the address we have on file.",
    "too_many": "Too many attempts from your network. Please wait a few minutes.",
    "pin_needed": "This conversation can't be opened with this link. Please contact {org} to get access.",
    "thread_title": "Your conversation with {org}",
    "you": "You",
    "reply_label": "Write a reply",
    "reply_button": "Send securely",
    "sign_out": "Sign out",
    "signed_out": "You are signed out. Use the link in your message to open the conversation again.",
    "session_over": "Your session has ended. Open the link in your message again.",
    "empty": "No messages yet.",
    "earlier": "Earlier messages",
    "content_removed": "(This message is no longer kept.)",
    "sent": "Sent",
}
