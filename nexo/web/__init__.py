"""The browser side served by Nexo itself: the chat client at ``/`` and the operator console.

``assets`` serves the static files with their caching and Content-Security-Policy;
``sampler`` keeps the last hour of the server's own metrics for the console;
``checklist`` turns a sample into the runbook's monitoring checklist (pure);
``console`` is the token-protected data endpoint the console page polls.
"""
