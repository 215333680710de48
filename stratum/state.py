"""The connection state machine: every state, every transition, every send rule, in ONE place.

Both roles share it (h11 style): :class:`~stratum.connection.ServerConnection` fires a
trigger when it *sends* the answer that changes the state (``subscribe_ok`` ->
``SUBSCRIBE``), :class:`~stratum.client.ClientConnection` when it *receives* that answer.

States::

    CONNECTED --CONFIGURE--> CONFIGURED --SUBSCRIBE--> SUBSCRIBED
        |  \\________________SUBSCRIBE_______________/^   (CONFIGURE and SUBSCRIBE may repeat)
        +-- PEER_CLOSED / LOCAL_CLOSE (from any state) --> CLOSED
        +-- PROTOCOL_ERROR (line too long, from an open state) --> ERROR --LOCAL_CLOSE--> CLOSED

Authorization is not a state: several workers may authorize on one connection, before or
after subscribing; the connections keep the set of authorized workers.

Requests from the peer never change the state and are delivered in every open state (the
pool answers a submit before subscribe with error 25 rather than the protocol layer dropping
it). A (state, trigger) pair missing from :data:`TRANSITIONS` raises LocalProtocolError, and
so does sending a message kind in a state not listed for it in :data:`CAN_SEND`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType

from .errors import LocalProtocolError

__all__ = ["CAN_SEND", "OPEN_STATES", "TRANSITIONS", "ConnState", "Outgoing", "Trigger"]


class ConnState(Enum):
    CONNECTED = "connected"  # TCP up, nothing negotiated yet
    CONFIGURED = "configured"  # mining.configure answered (BIP 310), not subscribed yet
    SUBSCRIBED = "subscribed"  # mining.subscribe answered: extranonce1 assigned, jobs may flow
    CLOSED = "closed"  # peer EOF delivered, or close() called; nothing more is sent
    ERROR = "error"  # the peer broke the framing; next_event() raises, answers still allowed


class Trigger(Enum):
    CONFIGURE = "configure"  # mining.configure answered successfully
    SUBSCRIBE = "subscribe"  # mining.subscribe answered successfully
    PEER_CLOSED = "peer_closed"  # end of stream delivered by next_event()
    LOCAL_CLOSE = "local_close"  # close() called
    PROTOCOL_ERROR = "protocol_error"  # RemoteProtocolError raised by next_event()


class Outgoing(Enum):
    """Kinds of message a connection may write."""

    RESPONSE = "response"  # an answer to a request of the peer
    REQUEST = "request"  # miner -> pool request
    SET_DIFFICULTY = "mining.set_difficulty"
    NOTIFY = "mining.notify"
    SET_EXTRANONCE = "mining.set_extranonce"
    SET_VERSION_MASK = "mining.set_version_mask"
    RECONNECT = "client.reconnect"
    SHOW_MESSAGE = "client.show_message"


_S = ConnState
_T = Trigger
OPEN_STATES: frozenset[ConnState] = frozenset({_S.CONNECTED, _S.CONFIGURED, _S.SUBSCRIBED})

_table: dict[tuple[ConnState, Trigger], ConnState] = {
    (_S.CONNECTED, _T.CONFIGURE): _S.CONFIGURED,
    (_S.CONFIGURED, _T.CONFIGURE): _S.CONFIGURED,
    (_S.SUBSCRIBED, _T.CONFIGURE): _S.SUBSCRIBED,  # configure after subscribe keeps jobs flowing
    (_S.CONNECTED, _T.SUBSCRIBE): _S.SUBSCRIBED,
    (_S.CONFIGURED, _T.SUBSCRIBE): _S.SUBSCRIBED,
    (_S.SUBSCRIBED, _T.SUBSCRIBE): _S.SUBSCRIBED,  # re-subscribe: a new extranonce1
    (_S.CLOSED, _T.PEER_CLOSED): _S.CLOSED,
    (_S.CLOSED, _T.LOCAL_CLOSE): _S.CLOSED,  # close() is idempotent
    (_S.ERROR, _T.LOCAL_CLOSE): _S.CLOSED,
}
for _state in OPEN_STATES:
    _table[_state, _T.PEER_CLOSED] = _S.CLOSED
    _table[_state, _T.LOCAL_CLOSE] = _S.CLOSED
    _table[_state, _T.PROTOCOL_ERROR] = _S.ERROR

TRANSITIONS: Mapping[tuple[ConnState, Trigger], ConnState] = MappingProxyType(_table)
"""(state, trigger) -> new state. Pairs not listed are LocalProtocolErrors."""

_ANSWERING = OPEN_STATES | {_S.ERROR}  # after a peer's framing error we may still explain why
CAN_SEND: Mapping[Outgoing, frozenset[ConnState]] = MappingProxyType(
    {
        Outgoing.RESPONSE: _ANSWERING,
        Outgoing.REQUEST: OPEN_STATES,
        Outgoing.SET_DIFFICULTY: _ANSWERING,
        Outgoing.NOTIFY: frozenset({_S.SUBSCRIBED}),  # a job needs the miner's extranonce1
        Outgoing.SET_EXTRANONCE: frozenset({_S.SUBSCRIBED}),
        Outgoing.SET_VERSION_MASK: _ANSWERING,
        Outgoing.RECONNECT: _ANSWERING,
        Outgoing.SHOW_MESSAGE: _ANSWERING,
    }
)
"""Message kind -> states in which it may be sent. Extra conditions (set_extranonce needs
mining.extranonce.subscribe, set_version_mask needs negotiated version rolling) are checked by
the connection on top of this."""


def next_state(state: ConnState, trigger: Trigger) -> ConnState:
    """The state after ``trigger``; LocalProtocolError if the table does not allow it."""
    try:
        return TRANSITIONS[state, trigger]
    except KeyError:
        raise LocalProtocolError(
            f"cannot {trigger.value.replace('_', ' ')} in state {state.value}"
        ) from None


def check_send(state: ConnState, kind: Outgoing) -> None:
    """LocalProtocolError unless a ``kind`` message may be sent in ``state``."""
    if state not in CAN_SEND[kind]:
        raise LocalProtocolError(f"cannot send {kind.value} in state {state.value}")
