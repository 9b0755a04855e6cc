// The meshbuild command line: one yargs command per file in ./commands.
import type { Argv } from 'yargs'
import { ExitCode, UsageError } from './exit-codes.ts'
import { runPlainNarCommand } from './commands/nar.ts'

export async function main (argv: string[]): Promise<number> {
  try {
    // `nar dump-path PATH` and `nar restore DIR` sit in pipelines where start-up counts: their
    // plain forms run before yargs and the other commands are loaded (~100 ms of a 0.6 s GiB
    // dump; docs/benchmarks.md). Anything else goes through yargs below.
    if (await runPlainNarCommand(argv)) return ExitCode.ok
    const parser = await buildParser(argv)
    await parser.parseAsync()
    return ExitCode.ok
  } catch (err) {
    const e = err as Error & { exitCode?: unknown }
    if (e.message !== '') process.stderr.write(`meshbuild: ${e.message}\n`)
    if (process.env.MESHBUILD_DEBUG != null) process.stderr.write(`${e.stack ?? ''}\n`)
    if (typeof e.exitCode === 'number') return e.exitCode
    // control-client.ts sits below the CLI and knows no exit codes; its errors are matched by name.
    return e.name === 'NodeUnavailable' ? ExitCode.unavailable : ExitCode.failure
  }
}

async function buildParser (argv: string[]): Promise<Argv> {
  const [
    { default: yargs }, { joinCommand }, { submitCommand }, { statusCommand }, { narCommand },
    { derivationCommand }, { keyCommand }, { pathInfoCommand }, { logCommand }, { nixConfigCommand }
  ] = await Promise.all([
    import('yargs'), import('./commands/join.ts'), import('./commands/submit.ts'), import('./commands/status.ts'),
    import('./commands/nar.ts'), import('./commands/derivation.ts'), import('./commands/key.ts'), import('./commands/path-info.ts'),
    import('./commands/log.ts'), import('./commands/nix-config.ts')
  ])
  return yargs(argv)
    .scriptName('meshbuild')
    .usage('$0 <command> [options]')
    .command(joinCommand)
    .command(submitCommand)
    .command(statusCommand)
    .command(narCommand)
    .command(derivationCommand)
    .command(keyCommand)
    .command(pathInfoCommand)
    .command(logCommand)
    .command(nixConfigCommand)
    .demandCommand(1, 'Name a command; see --help.')
    .strict()
    .help()
    .alias('h', 'help')
    .version()
    .fail((msg, err) => {
      // Throwing stops yargs before it runs the handler of a command with a missing argument.
      if (err != null) throw err
      throw new UsageError(`${msg}\nRun 'meshbuild --help' for usage.`)
    })
    .exitProcess(false)
}

// Run when invoked directly: `node node/cli/main.ts ...`.
if (import.meta.url === `file://${process.argv[1]}`) {
  process.exitCode = await main(process.argv.slice(2))
}
