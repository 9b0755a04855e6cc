// The check every NAR passes on its way into the local store, whichever backend imports it.
import { createHash } from 'node:crypto'
import { Hash } from '../../protocols/nix/hash.ts'
import { NarParser, type NarSink } from '../../protocols/nix/nar-decoder.ts'
import { NarFormatError } from '../../protocols/nix/nar-format.ts'
import { NarHashMismatch, type ImportInfo } from './store-backend.ts'

/** The NAR's framing is checked, its contents are not kept: Nix unpacks them. */
const IGNORE_NAR_CONTENTS: NarSink = { directory () {}, directoryEnd () {}, file () {}, data () {}, fileEnd () {}, symlink () {} }

/**
 * A NAR on its way into the store, checked as it goes: no byte past narSize or past the NAR's
 * end is passed on (Nix would read bytes after a NAR's ")" as the next thing on its input), and
 * the hash is compared before the stream ends, so a NAR that does not match fails before Nix
 * could register it.
 */
export async function * checkedNar (info: ImportInfo, nar: AsyncIterable<Uint8Array>, signal: AbortSignal | undefined): AsyncGenerator<Uint8Array> {
  const hasher = createHash(info.narHash.algorithm)
  const parser = new NarParser(IGNORE_NAR_CONTENTS)
  let size = 0
  const inNar = (step: () => void): void => {
    try {
      step()
    } catch (err) {
      if (!(err instanceof NarFormatError)) throw err
      throw new NarFormatError(`the NAR of '${info.path}': ${err.message.replace(/ at byte \d+$/, '')}`, err.offset)
    }
  }
  for await (const chunk of nar) {
    signal?.throwIfAborted()
    if (size + chunk.length > info.narSize) {
      throw new NarHashMismatch(info.path, { hash: info.narHash, size: info.narSize }, { size: size + chunk.length })
    }
    inNar(() => { parser.push(chunk) })
    hasher.update(chunk)
    size += chunk.length
    yield chunk
  }
  const actual = new Hash(info.narHash.algorithm, hasher.digest())
  if (size !== info.narSize || !actual.equals(info.narHash)) {
    throw new NarHashMismatch(info.path, { hash: info.narHash, size: info.narSize }, { hash: actual, size })
  }
  inNar(() => { parser.end() })
}
