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

/** mDNS service name: meshbuild nodes answer only each other, not every libp2p app on the LAN. */
export const MDNS_SERVICE_TAG = '_meshbuild._udp.local'
export const MDNS_INTERVAL_MS = 2_000

/** Label hashed with the mesh secret into the Noise prologue. */
export const MESH_PROLOGUE_LABEL = 'meshbuild mesh v1\0'
/** The secret of a mesh nobody configured: open to any meshbuild node on the LAN. */
export const DEFAULT_MESH_SECRET = 'meshbuild-default-mesh'

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

/** The signer answers a sign offer after pulling and storing every NAR in it. */
export const SIGN_REPLY_TIMEOUT_MS = 30 * 60_000
/** How often a node with outputs waiting for the signer offers them. */
export const SIGN_QUEUE_INTERVAL_MS = 3_000
