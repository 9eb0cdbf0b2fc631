"""The review admin: conversations (list, transcript, flags, exports), teams and memberships, audit.

Every ModelAdmin here answers its permissions from ``review.access`` (Membership roles), not from
Django's model permissions: ``is_staff`` only opens the door to the admin.
"""

from review.admin import audit, conversations, limits, retention, teams  # noqa: F401  (registers the ModelAdmins)
