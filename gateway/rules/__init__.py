"""Core decisions, one module each: pure functions of plain values, returning frozen dataclasses.

Every entry point (API, staff compose and reply, client portal, inbound SMS/email
acknowledgements, and later templates, campaigns and reminders) asks these modules rather than
deciding for itself, so a setting means the same thing wherever a message starts:

- `secure`: secure or standard, and where that came from (`secure_source`);
- `pin`: which PIN a link asks for, and whether the org requires one;
- `reply_route`: which channel (and so which of the contact's addresses) a reply or notice uses;
- `may_send`: whether this may be sent to this contact at all.

Nothing here reads the database: callers look the facts up and pass them in.
"""
