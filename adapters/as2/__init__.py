"""The platform transport: AS2 (RFC 4130) over HTTPS with mutual TLS, as client and as server.

Knows bytes, HTTP, TLS and AS2 headers only: sealed entities and MDNs reach it as opaque MIME, the
message type never. ``client`` posts one sealed message and classifies the outcome; ``server`` is
the endpoint that hands verified requests to a handler and returns its MDN (sync or async);
``tls`` builds the contexts; ``headers`` writes and reads the AS2 headers.
"""

from .client import As2Client, As2Failure, As2Partner, As2Permanent, As2Response, As2Security, As2Settings, As2Temporary
from .headers import as2_message_id, quote_name, parse_name, split_sealed
from .server import As2Reply, As2Request, AsyncMdnSettings, Handler, MdnHandler, Runner, make_app, serve
from .tls import client_context, identity_pem, server_context

__all__ = ["As2Client", "As2Failure", "As2Partner", "As2Permanent", "As2Reply", "As2Request", "As2Response",
           "As2Security", "As2Settings", "As2Temporary", "AsyncMdnSettings", "Handler", "MdnHandler", "Runner",
           "as2_message_id", "client_context", "identity_pem", "make_app", "parse_name", "quote_name", "serve",
           "server_context", "split_sealed"]
