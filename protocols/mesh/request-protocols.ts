// The request/response protocols of the mesh: one request message, one reply, then the stream
// closes. Each is named by its protocol id and the validators of its two messages.
//
// steal:  1. the thief writes {want, systems, features, mandatoryFeatures};
//         2. the owner replies {leaseMs, items}: jobs now leased to the thief, possibly none.
// lease:  1. the worker writes {renew, release?}: jobs it still builds, jobs it gives back;
//         2. the owner replies {lost}: renewed jobs whose lease the worker no longer holds.
// result: 1. the worker writes {drvPath, ok, outputs | failure};
//         2. the owner replies {accepted}, then fetches the outputs over the nar protocol.
// sign:   1. a worker writes {paths}: what it built, with its signatures, references first;
//         2. the signer pulls the NARs it lacks over nar, stores them, and replies {stored, rejected}.
// log:    1. a reader writes {drvPath, follow, fromByte?};
//         2. the peer sends {type:'lines'} messages, then one {type:'end', found, outcome}.
// path-info and nar (node/mesh/store-transfer.ts numbers their steps) are served the same way;
// nar's reply is not one message but, for each path, a header and the NAR's bytes.
import { PROTOCOL_LOG, PROTOCOL_LEASE, PROTOCOL_NAR, PROTOCOL_PATH_INFO, PROTOCOL_RESULT, PROTOCOL_SIGN, PROTOCOL_STEAL, SIGN_REPLY_TIMEOUT_MS } from './constants.ts'
import {
  validateLeaseReply, validateLeaseRequest, validateResultAck, validateResultReport, validateSignOffer,
  validateSignReply, validateStealGrant, validateLogRequest, validateStealRequest, validateNarRequest, validatePathInfoReply, validatePathInfoRequest
} from './messages.ts'

/** A protocol that starts with one request message; what follows is the protocol's own. */
export interface StreamProtocol<Req> {
  id: string
  validateRequest: (v: unknown) => Req
  /** How long the requester waits for the reply; the stream stays open that long. */
  replyTimeoutMs?: number
}

/** One request, one reply. */
export interface RequestProtocol<Req, Rep> extends StreamProtocol<Req> {
  validateReply: (v: unknown) => Rep
}

export const STEAL = { id: PROTOCOL_STEAL, validateRequest: validateStealRequest, validateReply: validateStealGrant }
export const LEASE = { id: PROTOCOL_LEASE, validateRequest: validateLeaseRequest, validateReply: validateLeaseReply }
export const RESULT = { id: PROTOCOL_RESULT, validateRequest: validateResultReport, validateReply: validateResultAck }
export const SIGN = { id: PROTOCOL_SIGN, validateRequest: validateSignOffer, validateReply: validateSignReply, replyTimeoutMs: SIGN_REPLY_TIMEOUT_MS }
export const PATH_INFO = { id: PROTOCOL_PATH_INFO, validateRequest: validatePathInfoRequest, validateReply: validatePathInfoReply }
export const NAR = { id: PROTOCOL_NAR, validateRequest: validateNarRequest }
export const LOG = { id: PROTOCOL_LOG, validateRequest: validateLogRequest }
