// tollgate in a private network: a container group in its own subnet of an existing VNet (no
// public IP), a user-assigned managed identity with AcrPull on the upstream registry (and, granted
// in Azure DevOps, read on the Artifacts feed), an NSG whose egress reaches only the upstreams,
// the store and cache on an Azure Files share reachable from that subnet only, and logs and
// diagnostic settings to Log Analytics. Not compiled in CI (no Bicep compiler is reachable
// there); checkov scans it (deploy/README.md).

@description('Region of the new resources.')
param location string = resourceGroup().location

@description('The existing virtual network the gate joins (in this resource group).')
param vnetName string

@description('Address prefix of the new subnet for the gate, inside the VNet\'s address space.')
param subnetPrefix string = '10.20.8.0/27'

@description('Address ranges of the clients (compute clusters, inference endpoints, AKS nodes).')
param clientPrefixes array = [
  '10.20.0.0/16'
]

@description('Address ranges of the upstreams the gate may reach on 443 (an egress firewall or proxy, or the upstreams themselves), beside the Azure service tags below.')
param upstreamPrefixes array

@description('The existing Azure Container Registry the gate pulls upstream images from.')
param upstreamRegistryName string

@description('The gate\'s image, by digest (deploy/container/build.sh; pushed to the upstream registry).')
param image string

@description('tollgate.toml, base64 (mounted at /etc/tollgate/config/tollgate.toml; set allowlist_dir = "/etc/tollgate/allowlists" and data_dir = "/var/lib/tollgate"). ACI restarts the gate when it exits (restartPolicy Always).')
@secure()
param configBase64 string

@description('Allowlist file, base64 (mounted at /etc/tollgate/allowlists/allowlist.toml).')
@secure()
param allowlistBase64 string

@description('Name of the new storage account holding the store and the cache (globally unique).')
@minLength(3)
@maxLength(24)
param storageAccountName string = 'tollgatestore'

@description('Log retention in days.')
param logRetentionDays int = 400

var name = 'tollgate'
var acrPullRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '7f951dda-4ed3-4680-a7ca-43fe172d538d')

resource vnet 'Microsoft.Network/virtualNetworks@2023-09-01' existing = {
  name: vnetName
}

resource upstreamRegistry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: upstreamRegistryName
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-identity'
  location: location
}

// AcrPull on the upstream registry: the gate exchanges the identity's Entra ID token for a
// registry token (auth = "managed-identity"); no password is stored.
resource acrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(upstreamRegistry.id, identity.id, acrPullRoleId)
  scope: upstreamRegistry
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: acrPullRoleId
  }
}

resource logs 'Microsoft.OperationalInsights/workspaces@2022-10-01' = {
  name: '${name}-logs'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: min(logRetentionDays, 730)
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Disabled'
  }
}

resource nsg 'Microsoft.Network/networkSecurityGroups@2023-09-01' = {
  name: '${name}-nsg'
  location: location
  properties: {
    securityRules: [
      {
        name: 'clients-to-gate'
        properties: {
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefixes: clientPrefixes
          sourcePortRange: '*'
          destinationAddressPrefix: subnetPrefix
          destinationPortRange: '8443'
        }
      }
      {
        name: 'deny-other-inbound'
        properties: {
          priority: 4000
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
      {
        name: 'to-upstreams'
        properties: {
          priority: 100
          direction: 'Outbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: subnetPrefix
          sourcePortRange: '*'
          destinationAddressPrefixes: upstreamPrefixes
          destinationPortRange: '443'
        }
      }
      {
        name: 'to-azure-services'
        properties: {
          priority: 110
          direction: 'Outbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: subnetPrefix
          sourcePortRange: '*'
          destinationAddressPrefix: 'AzureContainerRegistry'
          destinationPortRange: '443'
        }
      }
      {
        name: 'to-entra-id'
        properties: {
          priority: 120
          direction: 'Outbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: subnetPrefix
          sourcePortRange: '*'
          destinationAddressPrefix: 'AzureActiveDirectory'
          destinationPortRange: '443'
        }
      }
      {
        name: 'to-storage'
        properties: {
          priority: 130
          direction: 'Outbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: subnetPrefix
          sourcePortRange: '*'
          destinationAddressPrefix: 'Storage.${location}'
          destinationPortRange: '445'
        }
      }
      {
        name: 'to-monitor'
        properties: {
          priority: 140
          direction: 'Outbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: subnetPrefix
          sourcePortRange: '*'
          destinationAddressPrefix: 'AzureMonitor'
          destinationPortRange: '443'
        }
      }
      {
        name: 'deny-other-outbound'
        properties: {
          priority: 4000
          direction: 'Outbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}

resource nsgDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: '${name}-nsg-logs'
  scope: nsg
  properties: {
    workspaceId: logs.id
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

resource subnet 'Microsoft.Network/virtualNetworks/subnets@2023-09-01' = {
  parent: vnet
  name: '${name}-subnet'
  properties: {
    addressPrefix: subnetPrefix
    networkSecurityGroup: {
      id: nsg.id
    }
    serviceEndpoints: [
      {
        service: 'Microsoft.Storage'
      }
    ]
    delegations: [
      {
        name: 'aci'
        properties: {
          serviceName: 'Microsoft.ContainerInstance/containerGroups'
        }
      }
    ]
  }
}

// The store and the verified cache: an Azure Files share reachable from the gate's subnet only.
resource storage 'Microsoft.Storage/storageAccounts@2023-01-01' = {
  name: storageAccountName
  location: location
  sku: {
    name: 'Standard_GZRS'
  }
  kind: 'StorageV2'
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: true
    publicNetworkAccess: 'Disabled'
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
      virtualNetworkRules: [
        {
          id: subnet.id
          action: 'Allow'
        }
      ]
    }
    encryption: {
      requireInfrastructureEncryption: true
      keySource: 'Microsoft.Storage'
      services: {
        file: {
          enabled: true
        }
        blob: {
          enabled: true
        }
      }
    }
  }
}

resource fileService 'Microsoft.Storage/storageAccounts/fileServices@2023-01-01' = {
  parent: storage
  name: 'default'
  properties: {
    shareDeleteRetentionPolicy: {
      enabled: true
      days: 30
    }
  }
}

resource share 'Microsoft.Storage/storageAccounts/fileServices/shares@2023-01-01' = {
  parent: fileService
  name: 'tollgate-data'
  properties: {
    shareQuota: 256
  }
}

resource storageDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: '${name}-storage-logs'
  scope: fileService
  properties: {
    workspaceId: logs.id
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

resource gate 'Microsoft.ContainerInstance/containerGroups@2023-05-01' = {
  name: name
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    osType: 'Linux'
    restartPolicy: 'Always'
    sku: 'Standard'
    subnetIds: [
      {
        id: subnet.id
      }
    ]
    ipAddress: {
      type: 'Private'
      ports: [
        {
          port: 8443
          protocol: 'TCP'
        }
      ]
    }
    imageRegistryCredentials: [
      {
        server: upstreamRegistry.properties.loginServer
        identity: identity.id
      }
    ]
    diagnostics: {
      logAnalytics: {
        workspaceId: logs.properties.customerId
        workspaceKey: logs.listKeys().primarySharedKey
        logType: 'ContainerInstanceLogs'
      }
    }
    containers: [
      {
        name: 'tollgate'
        properties: {
          image: image
          command: [
            '/usr/local/bin/tollgate'
            'serve'
            '--config'
            '/etc/tollgate/config/tollgate.toml'
          ]
          environmentVariables: [
            {
              // The user-assigned identity for auth = "managed-identity" (IMDS in ACI).
              name: 'AZURE_CLIENT_ID'
              value: identity.properties.clientId
            }
            {
              name: 'TOLLGATE_LOG'
              value: 'json'
            }
          ]
          ports: [
            {
              port: 8443
              protocol: 'TCP'
            }
          ]
          resources: {
            requests: {
              cpu: 2
              memoryInGB: 4
            }
            limits: {
              cpu: 2
              memoryInGB: 4
            }
          }
          securityContext: {
            privileged: false
            allowPrivilegeEscalation: false
            runAsUser: 10001
            runAsGroup: 10001
            capabilities: {
              drop: [
                'ALL'
              ]
            }
          }
          volumeMounts: [
            {
              name: 'data'
              mountPath: '/var/lib/tollgate'
            }
            {
              name: 'config'
              mountPath: '/etc/tollgate/config'
              readOnly: true
            }
            {
              name: 'allowlists'
              mountPath: '/etc/tollgate/allowlists'
              readOnly: true
            }
          ]
        }
      }
    ]
    volumes: [
      {
        name: 'data'
        azureFile: {
          shareName: share.name
          storageAccountName: storage.name
          storageAccountKey: storage.listKeys().keys[0].value
        }
      }
      {
        name: 'config'
        secret: {
          'tollgate.toml': configBase64
        }
      }
      {
        name: 'allowlists'
        secret: {
          'allowlist.toml': allowlistBase64
        }
      }
    ]
  }
  dependsOn: [
    acrPull
  ]
}

@description('The gate\'s private address: point pip/uv and the runtimes at https://<this>:8443.')
output gateAddress string = gate.properties.ipAddress.ip

@description('Grant this principal read on the Azure Artifacts feed (Azure DevOps: feed permissions, Reader).')
output identityPrincipalId string = identity.properties.principalId

output identityClientId string = identity.properties.clientId
