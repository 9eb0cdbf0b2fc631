"""Account pages: the login page, and password reset only when the site can send mail.

Password reset mails a link; with no mail server (EMAIL_HOST unset) the reset pages answer 404 and
the login page says to ask an admin instead, so that no page claims a mail was sent.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import PasswordResetForm
from django.core.mail import EmailMultiAlternatives
from django.forms import Form
from django.http import Http404, HttpRequest, HttpResponse
from django.template import loader

log = logging.getLogger(__name__)


class LoginView(auth_views.LoginView):
    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["password_reset"] = settings.CHAT_PASSWORD_RESET
        context["sso_label"] = settings.CHAT_OIDC_LABEL if settings.CHAT_OIDC else ""
        context["sso_failed"] = self.request.GET.get("sso") == "failed"
        return context


def needs_mail(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.CHAT_PASSWORD_RESET:
            raise Http404("Password reset is off: this site has no mail server (EMAIL_HOST).")
        return view(request, *args, **kwargs)

    return wrapper


class ResetForm(PasswordResetForm):
    def send_mail(
        self,
        subject_template_name: str,
        email_template_name: str,
        context: dict[str, Any],
        from_email: str | None,
        to_email: str,
        html_email_template_name: str | None = None,
    ) -> None:
        """Django's, except that a failure to send is raised, not only logged: Django's own form
        would go on to "we've emailed you"."""
        subject = "".join(loader.render_to_string(subject_template_name, context).splitlines())
        body = loader.render_to_string(email_template_name, context)
        message = EmailMultiAlternatives(subject, body, from_email, [to_email])
        if html_email_template_name is not None:
            message.attach_alternative(
                loader.render_to_string(html_email_template_name, context), "text/html"
            )
        message.send()


class PasswordResetView(auth_views.PasswordResetView):
    """Django's, except that a mail that cannot be sent says so (503) instead of "we've emailed you"."""

    form_class = ResetForm

    def form_valid(self, form: Form) -> HttpResponse:
        try:
            return super().form_valid(form)
        except (smtplib.SMTPException, OSError) as exc:
            log.error("Password reset mail not sent: %s", exc)
            form.add_error(
                None, "The mail could not be sent: try again later, or ask an admin to set a new password."
            )
            return self.render_to_response(self.get_context_data(form=form), status=503)


password_reset = needs_mail(PasswordResetView.as_view())
password_reset_done = needs_mail(auth_views.PasswordResetDoneView.as_view())
password_reset_confirm = needs_mail(auth_views.PasswordResetConfirmView.as_view())
password_reset_complete = needs_mail(auth_views.PasswordResetCompleteView.as_view())
