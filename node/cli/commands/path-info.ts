// Placeholder: replaced by the real command.
import type { CommandModule } from 'yargs'

export const pathInfoCommand: CommandModule = {
  command: 'path-info',
  describe: '(not yet implemented)',
  handler: () => { throw new Error('path-info: not implemented yet') }
}
