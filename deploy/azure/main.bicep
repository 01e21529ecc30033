// tollgate in a private network: container groups in their own subnet of an existing VNet (no
// public IP), a user-assigned managed identity with AcrPull on the upstream registry (and, granted
// in Azure DevOps, read on the Artifacts feed), an NSG whose egress reaches only the upstreams and
// the gate's own state, and logs and diagnostic settings to Log Analytics. Two modes:
//   single: one container group; the embedded store and the cache on an Azure Files share.
//   ha:     `replicas` container groups behind an internal load balancer; the store on Azure
//           Database for PostgreSQL flexible server (private access, zone-redundant), the shared
//           cache tier in Blob Storage behind a private endpoint (public network access
//           disabled), each replica's local cache on an emptyDir.
// Not compiled in CI (no Bicep compiler is reachable there); checkov scans it (deploy/README.md).

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

@description('single: one gate, its state in the container group\'s share. ha: replicas sharing PostgreSQL and Blob Storage, behind an internal load balancer.')
@allowed([
  'single'
  'ha'
])
param mode string = 'single'

@description('ha: the number of gates behind the load balancer.')
@minValue(2)
param replicas int = 2

@description('ha: address prefix of the new subnet delegated to PostgreSQL flexible server.')
param databaseSubnetPrefix string = '10.20.9.0/28'

@description('ha: address prefix of the new subnet of the storage private endpoint and the load balancer\'s front end.')
param endpointSubnetPrefix string = '10.20.9.16/28'

@description('ha: the PostgreSQL role the gates log in as (the server\'s administrator).')
param databaseLogin string = 'tollgate'

@description('ha: its password, given to the gates as a secure environment variable (tollgate.toml: [store] password_env = "PGPASSWORD").')
@secure()
param databasePassword string = ''

var name = 'tollgate'
var ha = mode == 'ha'
var gateCount = ha ? replicas : 1
var blobContributorRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'ba92f5b4-2d11-453d-a403-e96b0029c9fe')
var cacheContainer = 'tollgate-cache'
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
        // ha: the load balancer's health probe (GET /readyz).
        name: 'load-balancer-probe'
        properties: {
          priority: 150
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'AzureLoadBalancer'
          sourcePortRange: '*'
          destinationAddressPrefix: subnetPrefix
          destinationPortRange: '8443'
        }
      }
      {
        // ha: the shared store, in its delegated subnet.
        name: 'to-database'
        properties: {
          priority: 160
          direction: 'Outbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: subnetPrefix
          sourcePortRange: '*'
          destinationAddressPrefix: databaseSubnetPrefix
          destinationPortRange: '5432'
        }
      }
      {
        // ha: the shared cache tier, through its private endpoint.
        name: 'to-cache-endpoint'
        properties: {
          priority: 170
          direction: 'Outbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: subnetPrefix
          sourcePortRange: '*'
          destinationAddressPrefix: endpointSubnetPrefix
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

// ha: PostgreSQL flexible server with private access only (a delegated subnet and a private DNS
// zone), zone-redundant, geo-redundant backups; the gates reach it over verified TLS.
resource databaseSubnet 'Microsoft.Network/virtualNetworks/subnets@2023-09-01' = if (ha) {
  parent: vnet
  name: '${name}-database'
  properties: {
    addressPrefix: databaseSubnetPrefix
    networkSecurityGroup: {
      id: nsg.id
    }
    delegations: [
      {
        name: 'postgres'
        properties: {
          serviceName: 'Microsoft.DBforPostgreSQL/flexibleServers'
        }
      }
    ]
  }
  dependsOn: [
    subnet
  ]
}

resource endpointSubnet 'Microsoft.Network/virtualNetworks/subnets@2023-09-01' = if (ha) {
  parent: vnet
  name: '${name}-endpoints'
  properties: {
    addressPrefix: endpointSubnetPrefix
    networkSecurityGroup: {
      id: nsg.id
    }
    privateEndpointNetworkPolicies: 'Enabled'
  }
  dependsOn: [
    databaseSubnet
  ]
}

resource databaseDns 'Microsoft.Network/privateDnsZones@2020-06-01' = if (ha) {
  name: '${name}.private.postgres.database.azure.com'
  location: 'global'
}

resource databaseDnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = if (ha) {
  parent: databaseDns
  name: '${name}-vnet'
  location: 'global'
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers@2023-06-01-preview' = if (ha) {
  name: '${name}-db-${uniqueString(resourceGroup().id)}'
  location: location
  sku: {
    name: 'Standard_D2ds_v5'
    tier: 'GeneralPurpose'
  }
  properties: {
    version: '16'
    administratorLogin: databaseLogin
    administratorLoginPassword: databasePassword
    storage: {
      storageSizeGB: 128
      autoGrow: 'Enabled'
    }
    backup: {
      backupRetentionDays: 35
      geoRedundantBackup: 'Enabled'
    }
    highAvailability: {
      mode: 'ZoneRedundant'
    }
    network: {
      delegatedSubnetResourceId: databaseSubnet.id
      privateDnsZoneArmResourceId: databaseDns.id
      publicNetworkAccess: 'Disabled'
    }
  }
  dependsOn: [
    databaseDnsLink
  ]
}

resource databaseName 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2023-06-01-preview' = if (ha) {
  parent: database
  name: 'tollgate'
}

// Connections are logged; TLS is required (the gates verify the server's certificate and name).
resource databaseTls 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2023-06-01-preview' = if (ha) {
  parent: database
  name: 'require_secure_transport'
  properties: {
    value: 'on'
    source: 'user-override'
  }
}

resource databaseLogConnections 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2023-06-01-preview' = if (ha) {
  parent: database
  name: 'log_connections'
  properties: {
    value: 'on'
    source: 'user-override'
  }
  dependsOn: [
    databaseTls
  ]
}

resource databaseDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (ha) {
  name: '${name}-database-logs'
  scope: database
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

// ha: the shared cache tier, a blob container of the storage account above (public network
// access disabled) behind a private endpoint; the identity writes and reads it (no key).
resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-01-01' = if (ha) {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource cache 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-01-01' = if (ha) {
  parent: blobService
  name: cacheContainer
  properties: {
    publicAccess: 'None'
  }
}

resource blobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (ha) {
  name: guid(storage.id, identity.id, blobContributorRoleId)
  scope: storage
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: blobContributorRoleId
  }
}

resource blobDns 'Microsoft.Network/privateDnsZones@2020-06-01' = if (ha) {
  name: 'privatelink.blob.${environment().suffixes.storage}'
  location: 'global'
}

resource blobDnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = if (ha) {
  parent: blobDns
  name: '${name}-vnet'
  location: 'global'
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}

resource blobEndpoint 'Microsoft.Network/privateEndpoints@2023-09-01' = if (ha) {
  name: '${name}-cache-endpoint'
  location: location
  properties: {
    subnet: {
      id: endpointSubnet.id
    }
    privateLinkServiceConnections: [
      {
        name: 'blob'
        properties: {
          privateLinkServiceId: storage.id
          groupIds: [
            'blob'
          ]
        }
      }
    ]
  }
}

resource blobEndpointDns 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2023-09-01' = if (ha) {
  parent: blobEndpoint
  name: 'blob'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: 'blob'
        properties: {
          privateDnsZoneId: blobDns.id
        }
      }
    ]
  }
}

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (ha) {
  name: '${name}-cache-logs'
  scope: blobService
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

resource gates 'Microsoft.ContainerInstance/containerGroups@2023-05-01' = [for i in range(0, gateCount): {
  name: ha ? '${name}-${i}' : name
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
          environmentVariables: concat([
            {
              // The user-assigned identity for auth = "managed-identity" and, in ha mode, for
              // the cache tier (IMDS in ACI).
              name: 'AZURE_CLIENT_ID'
              value: identity.properties.clientId
            }
            {
              name: 'TOLLGATE_LOG'
              value: 'json'
            }
          ], ha ? [
            {
              name: 'PGPASSWORD'
              secureValue: databasePassword
            }
            {
              name: 'AZURE_STORAGE_ACCOUNT_NAME'
              value: storage.name
            }
          ] : [])
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
      // single: the embedded store and the cache on the share. ha: this replica's local cache
      // tier, refilled from the shared one.
      ha ? {
        name: 'data'
        emptyDir: {}
      } : {
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
    blobContributor
    databaseName
    blobEndpointDns
  ]
}]

// ha: one private address for every gate, each taken out of rotation while its /readyz fails
// (the store unreachable, shutting down).
resource balancer 'Microsoft.Network/loadBalancers@2023-09-01' = if (ha) {
  name: '${name}-lb'
  location: location
  sku: {
    name: 'Standard'
  }
  properties: {
    frontendIPConfigurations: [
      {
        name: 'gate'
        properties: {
          privateIPAllocationMethod: 'Dynamic'
          subnet: {
            id: endpointSubnet.id
          }
        }
      }
    ]
    backendAddressPools: [
      {
        name: 'gates'
        properties: {
          loadBalancerBackendAddresses: [for i in range(0, gateCount): {
            name: 'gate-${i}'
            properties: {
              ipAddress: gates[i].properties.ipAddress.ip
              virtualNetwork: {
                id: vnet.id
              }
            }
          }]
        }
      }
    ]
    probes: [
      {
        name: 'readyz'
        properties: {
          protocol: 'Https'
          port: 8443
          requestPath: '/readyz'
          intervalInSeconds: 5
          numberOfProbes: 2
        }
      }
    ]
    loadBalancingRules: [
      {
        name: 'gate'
        properties: {
          frontendIPConfiguration: {
            id: resourceId('Microsoft.Network/loadBalancers/frontendIPConfigurations', '${name}-lb', 'gate')
          }
          backendAddressPool: {
            id: resourceId('Microsoft.Network/loadBalancers/backendAddressPools', '${name}-lb', 'gates')
          }
          probe: {
            id: resourceId('Microsoft.Network/loadBalancers/probes', '${name}-lb', 'readyz')
          }
          protocol: 'Tcp'
          frontendPort: 8443
          backendPort: 8443
          idleTimeoutInMinutes: 30
          enableTcpReset: true
        }
      }
    ]
  }
}

@description('The gate\'s private address: point pip/uv and the runtimes at https://<this>:8443.')
output gateAddress string = ha ? balancer.properties.frontendIPConfigurations[0].properties.privateIPAddress : gates[0].properties.ipAddress.ip

@description('ha: tollgate.toml\'s [store] url (with password_env = "PGPASSWORD") and [cache] url.')
output storeUrl string = ha ? 'postgres://${databaseLogin}@${database.properties.fullyQualifiedDomainName}:5432/tollgate?sslmode=verify-full' : ''

output cacheUrl string = ha ? 'az://${cacheContainer}/gate' : ''

@description('Grant this principal read on the Azure Artifacts feed (Azure DevOps: feed permissions, Reader).')
output identityPrincipalId string = identity.properties.principalId

output identityClientId string = identity.properties.clientId
