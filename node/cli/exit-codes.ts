// Exit codes of every meshbuild command (docs/operations.md lists them).
export const ExitCode = {
  ok: 0,
  /** The operation failed: a build failed, input was malformed, a check did not pass. */
  failure: 1,
  /** The command line itself was wrong. */
  usage: 2,
  /** The local node could not be reached. */
  unavailable: 3,
  /** submit --check-reproducible: two builds of a derivation differed (Nix's --check code). */
  notDeterministic: 104
} as const

/** A mistake in how the command was called; exits with ExitCode.usage. */
export class UsageError extends Error {
  override name = 'UsageError'
  readonly exitCode: number = ExitCode.usage
}

/**
 * A command that failed after saying why. The message (if any) is printed as
 * `meshbuild: <message>`; an empty message means the handler already reported.
 */
export class CommandFailed extends Error {
  override name = 'CommandFailed'
  readonly exitCode: number
  constructor (message: string, exitCode: number = ExitCode.failure) {
    super(message)
    this.exitCode = exitCode
  }
}
