// The meshbuild command line: one yargs command per file in ./commands.
import yargs from 'yargs'
import { ExitCode, UsageError } from './exit-codes.ts'
import { narCommand } from './commands/nar.ts'
import { derivationCommand } from './commands/derivation.ts'
import { keyCommand } from './commands/key.ts'
import { pathInfoCommand } from './commands/path-info.ts'
import { joinCommand } from './commands/join.ts'
import { submitCommand } from './commands/submit.ts'
import { statusCommand } from './commands/status.ts'

export async function main (argv: string[]): Promise<number> {
  const parser = yargs(argv)
    .scriptName('meshbuild')
    .usage('$0 <command> [options]')
    .command(joinCommand)
    .command(submitCommand)
    .command(statusCommand)
    .command(narCommand)
    .command(derivationCommand)
    .command(keyCommand)
    .command(pathInfoCommand)
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
  try {
    await parser.parseAsync()
    return ExitCode.ok
  } catch (err) {
    const e = err as Error & { exitCode?: unknown }
    if (e.message !== '') process.stderr.write(`meshbuild: ${e.message}\n`)
    if (process.env.MESHBUILD_DEBUG != null) process.stderr.write(`${e.stack ?? ''}\n`)
    return typeof e.exitCode === 'number' ? e.exitCode : ExitCode.failure
  }
}

// Run when invoked directly: `node node/cli/main.ts ...`.
if (import.meta.url === `file://${process.argv[1]}`) {
  process.exitCode = await main(process.argv.slice(2))
}
