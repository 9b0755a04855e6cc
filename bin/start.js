// The real entry, loaded by meshbuild.js once Node is known to be new enough. In a source checkout
// run the TypeScript directly (Node >= 22.18 strips types); an installed package has no sources
// (and Node strips no types under node_modules), so it runs the compiled dist/.
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const source = new URL('../node/cli/main.ts', import.meta.url)
const insideNodeModules = fileURLToPath(import.meta.url).includes('/node_modules/')
const entry = existsSync(source) && !insideNodeModules ? source : new URL('../dist/node/cli/main.js', import.meta.url)
const { main } = await import(entry.href)
process.exitCode = await main(process.argv.slice(2))
