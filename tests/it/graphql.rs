//! GraphQL endpoints through the proxy with real clients (`gh`, Octokit) and the example
//! contracts of `policies/github-graphql.toml`; see also `graphql_adapter`.
