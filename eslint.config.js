// ESLint flat config: typescript-eslint's type-aware rules, formatting left to Prettier.
import js from '@eslint/js';
import prettier from 'eslint-config-prettier';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'dashboard/', 'examples/', 'eslint.config.js'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      // Names starting with "_" are deliberately unused (a required parameter, a field removed by destructuring).
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' }],
      // Interfaces implemented by in-memory fakes and adapters have async methods with nothing to await.
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    // Imports run one way: the protocol, storage, engine and catalog layers know nothing of the layers above them.
    files: ['src/osb/**/*.ts', 'src/store/**/*.ts', 'src/docker/**/*.ts', 'src/catalog/**/*.ts', 'src/api/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['**/broker/**', '**/http/**', '**/dashboard/**', '**/cli/**', '**/server.js', '**/main.js'],
              message: 'This layer must not depend on the layers above it.',
            },
          ],
        },
      ],
    },
  },
  {
    files: ['test/**/*.ts', 'bench/**/*.ts'],
    rules: {
      // Replies in tests are parsed JSON that assertions read field by field; typing each one adds nothing.
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
    },
  },
  prettier,
);
