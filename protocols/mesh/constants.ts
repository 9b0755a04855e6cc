// Every number of the mesh protocols with a meaning, in one place. docs/protocols.md lists them.

export const PROTOCOL_PREFIX = '/meshbuild'

/** Gossip topics; the suffix is the message version. */
export const TOPIC_BEACON = 'meshbuild/beacon/1'
export const TOPIC_OFFER = 'meshbuild/offer/1'

/** Stream protocols. */
export const PROTOCOL_STEAL = '/meshbuild/steal/1.0.0'
export const PROTOCOL_LEASE = '/meshbuild/lease/1.0.0'
export const PROTOCOL_RESULT = '/meshbuild/result/1.0.0'
export const PROTOCOL_PATH_INFO = '/meshbuild/path-info/1.0.0'
export const PROTOCOL_NAR = '/meshbuild/nar/1.0.0'
export const PROTOCOL_SIGN = '/meshbuild/sign/1.0.0'
export const PROTOCOL_LOG = '/meshbuild/log/1.0.0'

/** mDNS service name: meshbuild nodes answer only each other, not every libp2p app on the LAN. */
export const MDNS_SERVICE_TAG = '_meshbuild._udp.local'
export const MDNS_INTERVAL_MS = 2_000

/** Label hashed with the mesh secret into the Noise prologue. */
export const MESH_PROLOGUE_LABEL = 'meshbuild mesh v1\0'
/**
 * The public secret of `join --open`: any meshbuild node on the LAN started with --open shares it.
 * (Nodes given no secret make their own; see docs/decisions.md.)
 */
export const OPEN_MESH_SECRET = 'meshbuild-default-mesh'

export const BEACON_INTERVAL_MS = 2_000
/** A peer not heard from for this long is forgotten. */
export const PEER_EXPIRY_MS = 7_000

/** Size limits of messages, in bytes of JSON. */
export const MAX_GOSSIP_BYTES = 16 * 1024
export const MAX_REQUEST_BYTES = 256 * 1024
export const MAX_REPLY_BYTES = 4 * 1024 * 1024

/** Timeouts. */
export const DIAL_TIMEOUT_MS = 10_000
export const REPLY_TIMEOUT_MS = 15_000
/** A NAR stream with no byte for this long is abandoned. */
export const NAR_IDLE_TIMEOUT_MS = 60_000

/** Limits of lists inside messages. */
export const MAX_LIST_ITEMS = 10_000
export const MAX_BUILDING_LISTED = 64
/** Claims (node/scheduler/claims.ts): the first characters of a .drv's hash part, 60 bits. */
export const CLAIM_KEY_LENGTH = 12
/** Claims one offer lists, of each kind (open, started): the most urgent; offers stay under 16 KiB. */
export const MAX_CLAIMS_LISTED = 256

/** The signer answers a sign offer after pulling and storing every NAR in it. */
export const SIGN_REPLY_TIMEOUT_MS = 30 * 60_000
/** log: the most of an existing log sent at once (its last bytes, from a line start). */
export const LOG_BACKLOG_BYTES = 4 * 1024 * 1024
/** log: the most bytes one request is sent in all, following included; then it ends. */
export const LOG_MAX_BYTES_PER_REQUEST = 64 * 1024 * 1024
/** log: longer lines are cut to this many characters. */
export const LOG_LINE_CHARS = 4096
/** log: lines and bytes of one message. */
export const LOG_MESSAGE_LINES = 512
export const LOG_MESSAGE_BYTES = 256 * 1024
/** log: a follower with nothing new is sent an empty message this often, so silence is not death. */
export const LOG_HEARTBEAT_MS = 20_000
/** log: a follower that hears nothing (not even a heartbeat) for this long gives up. */
export const LOG_FOLLOW_IDLE_MS = 3 * LOG_HEARTBEAT_MS
/** log: how often a followed file is looked at for new bytes. */
export const LOG_POLL_MS = 200
/** How often a node with outputs waiting for the signer offers them. */
export const SIGN_QUEUE_INTERVAL_MS = 3_000

/**
 * Inbound stream limits per protocol: streams open at once on one connection (libp2p resets the
 * rest) and a per-peer rate (GCRA: `burst` at once, then `perSecond`). A stream over the rate is
 * aborted before anything is read. Set well above what an honest peer sends: a thief asks for
 * work a few times a second at most, and a transfer opens one path-info and one nar stream (an
 * owner importing a fast worker's trivial builds may open a few dozen a second). The stream
 * count bounds the real cost (a nix-store --dump each); the rate bounds churn.
 */
export const INBOUND_LIMITS: Readonly<Record<string, { maxInboundStreams: number, perSecond: number, burst: number }>> = {
  [PROTOCOL_STEAL]: { maxInboundStreams: 16, perSecond: 20, burst: 40 },
  [PROTOCOL_LEASE]: { maxInboundStreams: 16, perSecond: 20, burst: 40 },
  [PROTOCOL_RESULT]: { maxInboundStreams: 32, perSecond: 100, burst: 200 },
  [PROTOCOL_PATH_INFO]: { maxInboundStreams: 32, perSecond: 100, burst: 200 },
  [PROTOCOL_NAR]: { maxInboundStreams: 32, perSecond: 100, burst: 200 },
  [PROTOCOL_SIGN]: { maxInboundStreams: 16, perSecond: 20, burst: 40 },
  // A follower holds its stream for a whole build; a few per connection are plenty.
  [PROTOCOL_LOG]: { maxInboundStreams: 16, perSecond: 10, burst: 20 }
}
/** For a protocol not listed above. */
export const DEFAULT_INBOUND_LIMIT = { maxInboundStreams: 32, perSecond: 50, burst: 100 }

/** Penalties (node/mesh/penalty-box.ts): how long a misbehaving peer is cut off. */
export const PENALTY_DURATION_MS = 10 * 60_000
export const PENALTY_MAX_DURATION_MS = 6 * 60 * 60_000
/** Malformed messages within the window that box a peer; one wrong NAR boxes at once. */
export const PENALTY_STRIKES = 3
export const PENALTY_STRIKE_WINDOW_MS = 60_000
export const PENALTY_FORGET_AFTER_MS = 24 * 60 * 60_000
export const PENALTY_MAX_PEERS = 1024

/**
 * gossipsub peer scoring, on our topics only: each rejected message counts (squared) against
 * its sender, decaying by this factor every second; below the graylist threshold gossipsub
 * ignores the peer altogether. The other score terms (mesh delivery rates, IP colocation) are
 * off: a small LAN mesh is quiet and many test nodes share an address.
 */
export const GOSSIP_INVALID_MESSAGE_WEIGHT = -10
export const GOSSIP_INVALID_MESSAGE_DECAY = 0.99
export const GOSSIP_GRAYLIST_THRESHOLD = -80

/** Signatures a path info may carry on the wire (messages.ts); a serving node adds its own first. */
export const MAX_PATH_SIGNATURES = 16

/** The node's own loop (node/mesh/): how often the scheduler is ticked (lease expiry, steals). */
export const TICK_MS = 500
/** Changes come in bursts (a finished build readies several jobs): announce once per burst. */
export const ANNOUNCE_DELAY_MS = 50
/** How often free space in the Nix store is checked. */
export const DISK_CHECK_MS = 10_000
/** A worker retries a result report at this interval while the owner is unreachable... */
export const REPORT_RETRY_MS = 2_000
/** ...and gives up after this long. */
export const REPORT_GIVE_UP_MS = 10 * 60_000
/** Jobs a thief asks for in one steal request (the steal request's `want` bound). */
export const MAX_STEAL_WANT = 64
/** Addresses and cache URLs a beacon lists (the beacon's bounds). */
export const MAX_BEACON_ADDRESSES = 32
export const MAX_CACHE_URLS = 8
/** The end of a failed build's log a worker reports to the owner: lines, and characters a line. */
export const REPORT_LOG_TAIL_LINES = 40
export const REPORT_LOG_LINE_CHARS = 4000
/** gossipsub frames (IHAVE lists grow with the mesh) up to this size are read. */
export const MAX_GOSSIP_FRAME_BYTES = 1024 * 1024
/** A cut-off bootstrap peer is dialled again this long after its penalty ends. */
export const REDIAL_SLACK_MS = 1_000
/** A peer over its stream rate is logged once per this many refusals, not on each. */
export const REFUSALS_PER_LOG_LINE = 10
/** Characters of a peer's error message kept in a penalty's reason. */
export const OFFENCE_REASON_CHARS = 200
