// The wire format of Nix's daemon worker protocol, as NixOS/nix 2.8.0 defines it in
// src/libstore/worker-protocol.hh, daemon.cc, remote-store.cc and src/libutil/serialise.{hh,cc}:
// every integer a u64 little-endian, strings length + bytes + zero padding to 8, lists a count
// then items. Pure: both a client and a server can use it.

export const WORKER_MAGIC_1 = 0x6e697863 // client's
export const WORKER_MAGIC_2 = 0x6478696f // server's
/** 1.34, what Nix 2.8 speaks: major in the high byte, minor in the low one. */
export const PROTOCOL_VERSION = 0x122

export const STDERR_NEXT = 0x6f6c6d67
export const STDERR_READ = 0x64617461
export const STDERR_WRITE = 0x64617416
export const STDERR_LAST = 0x616c7473
export const STDERR_ERROR = 0x63787470
export const STDERR_START_ACTIVITY = 0x53545254
export const STDERR_STOP_ACTIVITY = 0x53544f50
export const STDERR_RESULT = 0x52534c54

export const OP_IS_VALID_PATH = 1
export const OP_QUERY_PATH_INFO = 26
export const OP_QUERY_VALID_PATHS = 31

const WORD = 8
/** Bounds for what the daemon may send us, so a corrupt length cannot make us allocate gigabytes. */
export const MAX_STRING_LENGTH = 64 * 1024 * 1024
export const MAX_LIST_COUNT = 1024 * 1024
/** Log lines, error messages and activity texts. */
const MAX_MESSAGE_LENGTH = 1024 * 1024
const MAX_FIELDS = 1024
const FIELD_INT = 0
const FIELD_STRING = 1

export class DaemonProtocolError extends Error {
  override name = 'DaemonProtocolError'
}

/** An error the daemon reported (STDERR_ERROR); the message is the daemon's. */
export class DaemonError extends Error {
  override name = 'DaemonError'
}

function padding (length: number): number { return (WORD - (length % WORD)) % WORD }

export class WireWriter {
  private readonly chunks: Uint8Array[] = []

  u64 (value: number): this {
    if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`u64 ${value} is not a non-negative safe integer`)
    const b = new Uint8Array(WORD)
    new DataView(b.buffer).setBigUint64(0, BigInt(value), true)
    this.chunks.push(b)
    return this
  }

  bool (value: boolean): this { return this.u64(value ? 1 : 0) }

  bytes (data: Uint8Array): this {
    this.u64(data.length)
    this.chunks.push(data)
    const pad = padding(data.length)
    if (pad > 0) this.chunks.push(new Uint8Array(pad))
    return this
  }

  string (text: string): this { return this.bytes(new TextEncoder().encode(text)) }

  strings (list: readonly string[]): this {
    this.u64(list.length)
    for (const s of list) this.string(s)
    return this
  }

  toBytes (): Uint8Array {
    const total = this.chunks.reduce((n, c) => n + c.length, 0)
    const out = new Uint8Array(total)
    let at = 0
    for (const c of this.chunks) { out.set(c, at); at += c.length }
    return out
  }
}

export class WireReader {
  private readonly source: AsyncIterator<Uint8Array>
  private buffer: Uint8Array = new Uint8Array(0)

  constructor (source: AsyncIterator<Uint8Array> | AsyncIterable<Uint8Array>) {
    this.source = Symbol.asyncIterator in source ? source[Symbol.asyncIterator]() : source
  }

  private async take (n: number, field: string): Promise<Uint8Array> {
    while (this.buffer.length < n) {
      const next = await this.source.next()
      if (next.done === true) throw new DaemonProtocolError(`daemon connection closed while reading ${field}`)
      const merged = new Uint8Array(this.buffer.length + next.value.length)
      merged.set(this.buffer)
      merged.set(next.value, this.buffer.length)
      this.buffer = merged
    }
    const out = this.buffer.slice(0, n)
    this.buffer = this.buffer.subarray(n)
    return out
  }

  async readU64 (field: string): Promise<number> {
    const b = await this.take(WORD, field)
    const v = new DataView(b.buffer, b.byteOffset, WORD).getBigUint64(0, true)
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new DaemonProtocolError(`${field}: ${v} is too large (above 2^53 - 1)`)
    return Number(v)
  }

  async readBool (field: string): Promise<boolean> { return (await this.readU64(field)) !== 0 }

  async readBytes (field: string, max = MAX_STRING_LENGTH): Promise<Uint8Array> {
    const length = await this.readU64(`${field} length`)
    if (length > max) throw new DaemonProtocolError(`${field}: length ${length} exceeds the limit of ${max}`)
    const data = await this.take(length, field)
    await this.take(padding(length), `${field} padding`)
    return data
  }

  async readString (field: string, max = MAX_STRING_LENGTH): Promise<string> {
    return new TextDecoder().decode(await this.readBytes(field, max))
  }

  async readStrings (field: string, maxCount = MAX_LIST_COUNT, maxLen = MAX_STRING_LENGTH): Promise<string[]> {
    const count = await this.readU64(`${field} count`)
    if (count > maxCount) throw new DaemonProtocolError(`${field}: count ${count} exceeds the limit of ${maxCount}`)
    const out: string[] = []
    for (let i = 0; i < count; i++) out.push(await this.readString(`${field}[${i}]`, maxLen))
    return out
  }
}

async function skipFields (reader: WireReader, field: string): Promise<void> {
  const count = await reader.readU64(`${field} count`)
  if (count > MAX_FIELDS) throw new DaemonProtocolError(`${field}: count ${count} exceeds the limit of ${MAX_FIELDS}`)
  for (let i = 0; i < count; i++) {
    const type = await reader.readU64(`${field}[${i}] type`)
    if (type === FIELD_INT) await reader.readU64(`${field}[${i}]`)
    else if (type === FIELD_STRING) await reader.readString(`${field}[${i}]`, MAX_MESSAGE_LENGTH)
    else throw new DaemonProtocolError(`${field}[${i}]: unknown field type ${type}`)
  }
}

/**
 * Reads the daemon's stderr messages after a request until STDERR_LAST; log lines (NEXT) go to
 * `onLog`. Throws DaemonError on STDERR_ERROR (protocol ≥ 1.26 form), DaemonProtocolError on
 * anything it does not know.
 */
export async function readStderr (reader: WireReader, onLog?: (line: string) => void): Promise<void> {
  for (;;) {
    const code = await reader.readU64('stderr message code')
    switch (code) {
      case STDERR_LAST: return
      case STDERR_NEXT: {
        const line = await reader.readString('stderr log line', MAX_MESSAGE_LENGTH)
        onLog?.(line)
        break
      }
      case STDERR_START_ACTIVITY:
        await reader.readU64('activity id')
        await reader.readU64('activity level')
        await reader.readU64('activity type')
        await reader.readString('activity text', MAX_MESSAGE_LENGTH)
        await skipFields(reader, 'activity fields')
        await reader.readU64('activity parent')
        break
      case STDERR_STOP_ACTIVITY:
        await reader.readU64('activity id')
        break
      case STDERR_RESULT:
        await reader.readU64('result activity id')
        await reader.readU64('result type')
        await skipFields(reader, 'result fields')
        break
      case STDERR_ERROR: {
        await reader.readString('error type', MAX_MESSAGE_LENGTH)
        await reader.readU64('error level')
        await reader.readString('error name', MAX_MESSAGE_LENGTH)
        const message = await reader.readString('error message', MAX_MESSAGE_LENGTH)
        await reader.readU64('error have-pos')
        const traces = await reader.readU64('error trace count')
        if (traces > MAX_FIELDS) throw new DaemonProtocolError(`error trace count ${traces} exceeds the limit of ${MAX_FIELDS}`)
        for (let i = 0; i < traces; i++) {
          await reader.readU64(`error trace[${i}] have-pos`)
          await reader.readString(`error trace[${i}] hint`, MAX_MESSAGE_LENGTH)
        }
        throw new DaemonError(message)
      }
      default:
        throw new DaemonProtocolError(`stderr message code: unknown code 0x${code.toString(16)}`)
    }
  }
}

/** Checks the server's magic word of the handshake. */
export async function readServerHello (reader: WireReader): Promise<number> {
  const magic = await reader.readU64('server magic')
  if (magic !== WORKER_MAGIC_2) throw new DaemonProtocolError(`server magic: expected 0x${WORKER_MAGIC_2.toString(16)}, got 0x${magic.toString(16)}`)
  return await reader.readU64('server protocol version')
}
